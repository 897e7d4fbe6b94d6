/* buttoncast console: the few things the server cannot do for the page. No library, no build step.
   - [data-poll]: replace the element with a fresh copy from its URL every second until data-final="true"
   - [data-max]: count code points as the server does (an emoji is one) and refuse the form past the limit
   - the new-campaign editor: placeholders from the CSV's header, and a preview bubble with a row's values */
(() => {
  "use strict";
  const POLL_MS = 1000;
  const codePoints = (text) => Array.from(text || "").length;

  function startPolling(el) {
    const tick = async () => {
      if (el.dataset.final === "true" || !el.isConnected) return;
      try {
        const response = await fetch(el.dataset.poll, { credentials: "same-origin", headers: { Accept: "text/html" } });
        if (response.ok) {
          const holder = document.createElement("template");
          holder.innerHTML = (await response.text()).trim();
          const fresh = holder.content.querySelector("[data-poll]");
          if (fresh) {
            const becameFinal = el.dataset.final !== "true" && fresh.dataset.final === "true";
            el.replaceWith(fresh); el = fresh;
            if (becameFinal) refreshSections();
          }
        }
      } catch (err) { /* the server restarted or the network blinked: try again next tick */ }
      setTimeout(tick, POLL_MS);
    };
    setTimeout(tick, POLL_MS);
  }

  /* Once the campaign is over, the rest of the page (the recipients table) is fetched once more. */
  async function refreshSections() {
    const response = await fetch(location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    document.querySelectorAll("[data-refresh-on-final]").forEach((old) => {
      const fresh = doc.getElementById(old.id);
      if (fresh) old.replaceWith(fresh);
    });
  }

  function startCounter(input) {
    const max = Number(input.dataset.max);
    const out = document.getElementById(input.id + "-count");
    const update = () => {
      const n = codePoints(input.value);
      const over = n > max;
      if (out) { out.textContent = `${n} / ${max}`; out.classList.toggle("over", over); }
      input.setCustomValidity(over ? `${n} characters; the limit is ${max}` : "");
    };
    input.addEventListener("input", update);
    update();
  }

  /* RFC 4180 enough for a header and the first rows: quotes, doubled quotes, CRLF. */
  function parseCsv(text, maxRows) {
    const rows = []; let row = []; let field = ""; let quoted = false;
    for (let i = 0; i < text.length && rows.length < maxRows; i++) {
      const ch = text[i];
      if (quoted) {
        if (ch === '"' && text[i + 1] === '"') { field += '"'; i++; }
        else if (ch === '"') quoted = false;
        else field += ch;
      } else if (ch === '"') quoted = true;
      else if (ch === ",") { row.push(field); field = ""; }
      else if (ch === "\n" || ch === "\r") {
        if (ch === "\r" && text[i + 1] === "\n") i++;
        row.push(field); rows.push(row); row = []; field = "";
      } else field += ch;
    }
    if ((field || row.length) && rows.length < maxRows) { row.push(field); rows.push(row); }
    return rows;
  }

  function startEditor(form) {
    const PREVIEW_ROWS = 50; const HEAD_BYTES = 65536;
    const fillable = ["header_text", "body_text", "footer_text"].map((id) => document.getElementById(id));
    let lastFocused = fillable[1]; let header = []; let rows = [];
    fillable.forEach((el) => el.addEventListener("focus", () => { lastFocused = el; }));
    const select = document.getElementById("preview-row");
    const chips = document.getElementById("placeholders");

    const fill = (text) => {
      const row = rows[Number(select.value)];
      return (text || "").replace(/\{\{\s*([^{}]*?)\s*\}\}/g, (whole, name) => {
        const at = header.indexOf(name);
        return row && at >= 0 ? row[at] : whole;
      });
    };
    const render = () => {
      fillable.forEach((el) => {
        const target = document.getElementById("preview-" + el.id);
        target.textContent = fill(el.value);
        target.hidden = !el.value;
      });
      const buttons = document.getElementById("preview-buttons");
      buttons.replaceChildren();
      for (let i = 1; i <= 3; i++) {
        const title = document.getElementById("button_title_" + i);
        if (title && title.value) {
          const b = document.createElement("span"); b.className = "b-button"; b.dir = "auto"; b.textContent = title.value;
          buttons.appendChild(b);
        }
      }
    };
    form.addEventListener("input", render);
    select.addEventListener("change", render);

    document.getElementById("recipients").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (!file) return;
      const parsed = parseCsv(await file.slice(0, HEAD_BYTES).text(), PREVIEW_ROWS + 1);
      header = (parsed.shift() || []).map((h) => h.trim().replace(/^\ufeff/, ""));
      rows = parsed.filter((r) => r.length > 1 || r[0]);
      chips.replaceChildren();
      header.filter((h) => h && h !== "phone").forEach((name) => {
        const chip = document.createElement("button");
        chip.type = "button"; chip.className = "chip"; chip.textContent = `{{${name}}}`;
        chip.addEventListener("click", () => {
          const el = lastFocused; const at = el.selectionStart ?? el.value.length;
          el.value = el.value.slice(0, at) + chip.textContent + el.value.slice(el.selectionEnd ?? at);
          el.dispatchEvent(new Event("input", { bubbles: true })); el.focus();
        });
        chips.appendChild(chip);
      });
      document.getElementById("placeholders-field").hidden = chips.childElementCount === 0;
      const phoneAt = header.indexOf("phone");
      select.replaceChildren(...rows.map((r, i) => new Option(phoneAt >= 0 ? r[phoneAt] : `row ${i + 2}`, String(i))));
      render();
    });
    render();
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll("[data-poll]").forEach(startPolling);
    document.querySelectorAll("[data-max]").forEach(startCounter);
    const editor = document.getElementById("new-campaign");
    if (editor) startEditor(editor);
  });
})();
