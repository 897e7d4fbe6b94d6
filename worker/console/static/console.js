/* buttoncast console: the few things the server cannot do for the page. No library, no build step.
   - [data-poll]: replace the element with a fresh copy from its URL every second (or data-poll-ms) until data-final="true"
   - [data-max]: count code points as the server does (an emoji is one) and refuse the form past the limit
   - the new-campaign editor: placeholders from the CSV's header, and a preview bubble with a row's values
     beside each variant of the message; "Add a variant" shows the next one (B, C) and the A/B test's options
   - the new-campaign audience: a CSV or a saved segment (and how often it repeats)
   - the segment builder: rows of conditions, their JSON, and the live count (the server validates and counts)
   - [data-id-from]: a button's id written from its title (its placeholder) unless the person types one
   - a CSV kept from an earlier try of New campaign: its first rows come with the page (data-preview-rows)
   - .table-wrap: marked data-scrolls while its table is wider than it (the stylesheet says so)
   - the recipient picker: what one recipient, searched by phone among all of them, receives
   - a[data-confirm]: the confirmation page it links to (Cancel, Revoke, Disable) shown in a dialog */
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
      setTimeout(tick, Number(el.dataset.pollMs) || POLL_MS);
    };
    setTimeout(tick, Number(el.dataset.pollMs) || POLL_MS);
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
    const TEXTS = ["header_text", "body_text", "footer_text"];
    const prefixes = Array.from(form.querySelectorAll("[data-variant]")).map((v) => v.dataset.prefix);
    if (!prefixes.length) prefixes.push("");
    const fillable = prefixes.flatMap((px) => TEXTS.map((name) => document.getElementById(px + name)));
    let lastFocused = document.getElementById("body_text"); let header = []; let rows = [];
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
      prefixes.forEach((px) => {
        const buttons = document.getElementById("preview-" + px + "buttons");
        buttons.replaceChildren();
        for (let i = 1; i <= 3; i++) {
          const title = document.getElementById(px + "button_title_" + i);
          if (title && title.value) {
            const b = document.createElement("span"); b.className = "b-button"; b.dir = "auto"; b.textContent = title.value;
            buttons.appendChild(b);
          }
        }
      });
    };
    form.addEventListener("input", render);
    select.addEventListener("change", render);

    /* A CSV's header and first rows: placeholders to insert, rows to preview the message with. */
    const useCsv = (parsed) => {
      header = (parsed.shift() || []).map((h) => h.trim().replace(/^\ufeff/, ""));
      rows = parsed.filter((r) => r.length > 1 || r[0]);
      chips.replaceChildren();
      header.filter((h) => h && h !== "phone").forEach((name) => {
        const chip = document.createElement("button");
        chip.type = "button"; chip.className = "chip"; chip.textContent = `{{${name}}}`;
        chip.addEventListener("click", () => {
          const el = lastFocused.disabled ? document.getElementById("body_text") : lastFocused; const at = el.selectionStart ?? el.value.length;
          el.value = el.value.slice(0, at) + chip.textContent + el.value.slice(el.selectionEnd ?? at);
          el.dispatchEvent(new Event("input", { bubbles: true })); el.focus();
        });
        chips.appendChild(chip);
      });
      document.getElementById("placeholders-field").hidden = chips.childElementCount === 0;
      const phoneAt = header.indexOf("phone");
      select.replaceChildren(...rows.map((r, i) => new Option(phoneAt >= 0 ? r[phoneAt] : `row ${i + 2}`, String(i))));
      render();
    };
    document.getElementById("recipients").addEventListener("change", async (event) => {
      const file = event.target.files[0];
      if (file) useCsv(parseCsv(await file.slice(0, HEAD_BYTES).text(), PREVIEW_ROWS + 1));
    });
    const kept = document.getElementById("kept-upload");   // the file kept from an earlier try: its rows come with the page
    if (kept && kept.dataset.previewRows) {
      const head = JSON.parse(kept.dataset.previewRows);
      useCsv([head.header].concat(head.rows));
    }
    render();
  }

  /* An A/B test: variants B and C are in the page, hidden and disabled (never sent) until "Add a
     variant"; the last one shown has a "Remove" button; the test's options show with 2 or more. The
     buttons are submit buttons too, so without this script the server adds or removes one. */
  function startVariants(form) {
    const sections = Array.from(form.querySelectorAll("[data-variant]"));
    const add = document.getElementById("add-variant");
    const options = document.getElementById("ab-options");
    const fallback = document.getElementById("default_variant");
    if (!add || !options || sections.length < 2) return;
    const show = (section, on) => { section.hidden = !on; section.querySelector("fieldset").disabled = !on; };
    const update = () => {
      const n = sections.filter((s) => !s.hidden).length;
      add.hidden = n >= sections.length;
      options.hidden = n < 2; options.disabled = n < 2;
      sections.forEach((section, i) => {
        const remove = section.querySelector("[data-remove-variant]");
        if (remove) remove.hidden = i !== n - 1;
        const legend = section.querySelector("legend");
        legend.textContent = n > 1 ? legend.dataset.many : legend.dataset.one;
      });
      Array.from(fallback.options).forEach((o, i) => { o.hidden = i >= n; o.disabled = i >= n; });
      if (fallback.selectedIndex >= n) fallback.selectedIndex = 0;
    };
    add.addEventListener("click", (event) => {
      event.preventDefault();
      const next = sections.find((s) => s.hidden);
      if (!next) return;
      show(next, true); update();
      document.getElementById(next.dataset.prefix + "body_text").focus();
    });
    form.addEventListener("click", (event) => {
      const remove = event.target.closest("[data-remove-variant]");
      if (!remove) return;
      event.preventDefault();
      show(remove.closest("[data-variant]"), false); update();
      add.focus();
    });
    update();
  }

  /* Upload a CSV or a saved segment: the other choice's inputs are hidden and disabled (never sent,
     never required); "Repeat every" -> "Custom" shows its own duration input. */
  function startAudienceChoice(form) {
    const groups = form.querySelectorAll("[data-audience]");
    const every = document.getElementById("every");
    const custom = document.getElementById("every-custom-field");
    const update = () => {
      const chosen = (form.querySelector("input[name=audience]:checked") || {}).value || "csv";
      groups.forEach((group) => {
        const on = group.dataset.audience === chosen;
        group.hidden = !on; group.disabled = !on;
      });
      if (every && custom) {
        const isCustom = every.value === "custom";
        custom.hidden = !isCustom;
        document.getElementById("every_custom").disabled = !isCustom;
        document.getElementById("until-field").hidden = every.value === "";
        document.getElementById("until").disabled = every.value === "";
      }
    };
    form.addEventListener("change", (event) => {
      if (event.target.name === "audience" || event.target === every) update();
    });
    update();
  }

  /* The segment builder. The server owns the rules: every change posts the form (debounced) to
     /segments/count, which answers with the count, the rules in words, the JSON the rows write and
     each row's problems; when the person edits the JSON instead, it answers with the rows that write it. */
  function startBuilder(form) {
    const DEBOUNCE_MS = 300;
    const rowsBox = document.getElementById("rows");
    const source = document.getElementById("rules_source");
    const json = document.getElementById("rules_json");
    const count = document.getElementById("live-count");
    const words = document.getElementById("live-words");
    const problems = document.getElementById("live-problems");
    const template = document.getElementById("row-template");
    let timer = null; let sequence = 0; let inFlight = null;

    const showInputs = (row) => {
      const option = row.querySelector("[data-role=kind]").selectedOptions[0];
      const inputs = (option.dataset.inputs || "").split(" ");
      row.querySelectorAll("[data-input]").forEach((el) => { el.hidden = !inputs.includes(el.dataset.input); });
      const label = row.querySelector("[data-role=value-label]");
      if (label) label.textContent = option.dataset.valueLabel || "Value";
      const value = row.querySelector("[data-input=value] input");
      if (value) value.placeholder = option.dataset.placeholder || "";
    };
    const showButtons = (row) => {
      const campaign = row.querySelector("[data-role=campaign]").value;
      const buttons = row.querySelector("[data-role=button]");
      Array.from(buttons.options).forEach((o) => { if (o.value) o.hidden = o.dataset.campaign !== campaign; });
      if (buttons.selectedOptions[0] && buttons.selectedOptions[0].hidden) buttons.value = "";
    };
    const setRowProblems = (byRow) => {
      Array.from(rowsBox.querySelectorAll(".rule-row")).forEach((row, position) => {
        const list = byRow[String(position)] || [];
        const out = row.querySelector("[data-role=error]");
        out.textContent = list.join("; "); out.hidden = list.length === 0;
        row.classList.toggle("invalid", list.length > 0);
      });
    };
    const showAnswer = (answer) => {
      count.textContent = answer.count_text;
      words.textContent = answer.words || (answer.count === null ? "Fix what is marked to see the count." : "");
      problems.replaceChildren(...(answer.problems || []).map((text) => {
        const li = document.createElement("li"); li.textContent = text; return li;
      }));
      problems.hidden = !(answer.problems || []).length;
      if (answer.rows_html !== null && answer.rows_html !== undefined) {
        rowsBox.innerHTML = answer.rows_html;
        rowsBox.querySelectorAll(".rule-row").forEach((row) => { showInputs(row); showButtons(row); });
      }
      if (source.value === "json" && typeof answer.representable === "boolean") {   // null: the JSON is unreadable
        rowsBox.hidden = !answer.representable;
        document.getElementById("add-row").hidden = !answer.representable;
        document.getElementById("rows-note").hidden = answer.representable;
      }
      if (answer.rules !== null && answer.rules !== undefined) json.value = answer.rules;
      setRowProblems(answer.rows || {});
    };
    const recount = async () => {
      const mine = ++sequence;
      if (inFlight) inFlight.abort();
      inFlight = new AbortController();
      count.classList.add("stale");
      try {
        const response = await fetch(form.dataset.countUrl, {
          method: "POST", body: new FormData(form), credentials: "same-origin", signal: inFlight.signal,
          headers: { Accept: "application/json" } });
        const answer = await response.json();
        if (mine === sequence) showAnswer(answer);
      } catch (err) { /* aborted by a newer change, or the network blinked: the next change counts again */ }
      if (mine === sequence) count.classList.remove("stale");
    };
    const soon = () => { clearTimeout(timer); timer = setTimeout(recount, DEBOUNCE_MS); };

    form.addEventListener("input", (event) => {
      if (event.target.name === "name") return;
      source.value = event.target === json ? "json" : "rows";
      soon();
    });
    form.addEventListener("change", (event) => {
      const row = event.target.closest(".rule-row");
      if (row && event.target.dataset.role === "kind") showInputs(row);
      if (row && event.target.dataset.role === "campaign") showButtons(row);
      if (event.target.name === "name" || event.target === json) return;
      source.value = "rows";
      soon();
    });
    form.addEventListener("click", (event) => {
      if (event.target.dataset.role !== "remove") return;
      event.target.closest(".rule-row").remove();
      source.value = "rows";
      soon();
    });
    document.getElementById("add-row").addEventListener("click", () => {
      const used = Array.from(rowsBox.querySelectorAll(".rule-row")).map((r) => Number(r.dataset.row));
      const next = String(used.length ? Math.max(...used) + 1 : 0);
      const holder = document.createElement("template");
      holder.innerHTML = template.innerHTML.replaceAll("__i__", next).trim();
      const row = holder.content.firstElementChild;
      rowsBox.appendChild(row);
      showInputs(row); showButtons(row);
      row.querySelector("[data-role=kind]").focus();
      source.value = "rows";
      soon();
    });
    rowsBox.querySelectorAll(".rule-row").forEach((row) => { showInputs(row); showButtons(row); });
  }

  /* Button ids: each is written from its title ("Book a table" -> book_a_table), shown as the id
     input's placeholder, unless the person types one. The server's rule (message_form.button_ids):
     unique within the message (_2, _3), never one of the form's data-reserved-ids (the opt-out ids). */
  function startButtonIds(group) {
    const inputs = Array.from(group.querySelectorAll("[data-id-from]"));
    const form = group.closest("form") || group;
    const reserved = (form.dataset.reservedIds || "").split(" ").filter(Boolean);
    const update = () => {
      const taken = new Set(reserved.concat(inputs.map((input) => input.value.trim()).filter(Boolean)));
      inputs.forEach((input) => {
        const title = document.getElementById(input.dataset.idFrom);
        const max = Number(input.dataset.max) || 256;
        if (input.value.trim() || !title || !title.value) { input.placeholder = ""; return; }
        const base = slug(title.value, max) || `button_${(input.id.match(/(\d+)$/) || ["", ""])[1]}`;
        let candidate = base;
        for (let n = 2; taken.has(candidate); n++) candidate = base.slice(0, max - String(n).length - 1) + "_" + n;
        taken.add(candidate); input.placeholder = candidate;
      });
    };
    group.addEventListener("input", update);
    update();
  }
  function slug(text, max) {
    return (text || "").normalize("NFKD").replace(/\p{M}/gu, "").toLowerCase()
      .replace(/[^\p{L}\p{N}]+/gu, "_").replace(/^_+|_+$/g, "").slice(0, max);
  }

  /* The recipient picker (review step, campaign page): as the person types the start of a phone
     number, the server answers with the matching recipients among all of them and, once one is
     chosen, that recipient's filled message (routes_preview, `fragment=1`). */
  function startPicker(form) {
    const DEBOUNCE_MS = 250;
    const input = form.querySelector("input[name=phone]");
    let timer = null; let sequence = 0;
    const show = async (url) => {
      const mine = ++sequence;
      try {
        const response = await fetch(url + (url.includes("?") ? "&" : "?") + "fragment=1",
          { credentials: "same-origin", headers: { Accept: "text/html" } });
        if (!response.ok || mine !== sequence) return;
        const holder = document.createElement("template");
        holder.innerHTML = (await response.text()).trim();
        const fresh = holder.content.getElementById("recipient-preview");
        const old = document.getElementById("recipient-preview");
        if (fresh && old) old.replaceWith(fresh);
      } catch (err) { /* the network blinked: the next keystroke asks again */ }
    };
    const search = () => show(form.action + "?phone=" + encodeURIComponent(input.value.trim()));
    input.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(search, DEBOUNCE_MS); });
    form.addEventListener("submit", (event) => { event.preventDefault(); clearTimeout(timer); search(); });
    document.addEventListener("click", (event) => {
      const link = event.target.closest("#recipient-preview a[data-phone], #recipient-preview a[data-more]");
      if (!link) return;
      event.preventDefault();
      if (link.dataset.phone) input.value = link.dataset.phone;
      show(link.getAttribute("href"));
    });
  }

  /* An action that cannot be undone links to its confirmation page (the whole step without script);
     here that page's #confirm is shown in a modal dialog instead: "No" (data-dismiss) or Escape
     closes it and changes nothing, "Yes" posts its form as the page would. The link is found by
     delegation: a polled fragment replaces it every second. */
  async function openConfirm(link) {
    const fallback = () => location.assign(link.href);
    let doc;
    try {
      const response = await fetch(link.href, { credentials: "same-origin", headers: { Accept: "text/html" } });
      if (!response.ok || response.redirected) return fallback();   // e.g. already cancelled: the page says why
      doc = new DOMParser().parseFromString(await response.text(), "text/html");
    } catch (err) { return fallback(); }
    const question = doc.getElementById("confirm");
    if (!question) return fallback();
    const title = question.querySelector("h1");
    if (title) { const h2 = document.createElement("h2"); h2.id = title.id; h2.textContent = title.textContent; title.replaceWith(h2); }
    const dialog = document.createElement("dialog");
    dialog.className = "confirm-dialog";
    dialog.setAttribute("aria-labelledby", "confirm-title");
    dialog.appendChild(document.adoptNode(question));
    document.body.appendChild(dialog);
    const no = dialog.querySelector("[data-dismiss]");
    no.addEventListener("click", (event) => { event.preventDefault(); dialog.close(); });
    dialog.addEventListener("close", () => {
      dialog.remove();
      const back = document.getElementById(link.id) || link;
      if (back.isConnected) back.focus();
    });
    dialog.showModal();
    no.focus();
  }

  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a[data-confirm]");
    if (!link || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    openConfirm(link);
  });

  /* A table wider than its box scrolls inside it (never the page): its box gets data-scrolls, which
     the stylesheet turns into a "Scroll sideways for more" note; checked again when the window is
     resized or a polled part of the page is replaced. */
  function markScrollingTables() {
    let queued = false;
    const mark = () => {
      queued = false;
      document.querySelectorAll(".table-wrap").forEach((box) => {
        const scrolls = box.scrollWidth > box.clientWidth + 1;
        box.toggleAttribute("data-scrolls", scrolls);
        // a box that scrolls is reachable by keyboard (arrow keys scroll it): WCAG 2.1.1
        if (scrolls) box.setAttribute("tabindex", "0"); else box.removeAttribute("tabindex");
      });
    };
    const soon = () => { if (!queued) { queued = true; requestAnimationFrame(mark); } };
    window.addEventListener("resize", soon);
    new MutationObserver((changes) => {
      if (changes.some((c) => c.type === "childList")) soon();
    }).observe(document.body, { childList: true, subtree: true });
    mark();
  }

  document.addEventListener("DOMContentLoaded", () => {
    markScrollingTables();
    document.querySelectorAll("[data-poll]").forEach(startPolling);
    const picker = document.getElementById("preview-search");
    if (picker) startPicker(picker);
    document.querySelectorAll("[data-max]").forEach(startCounter);
    const editor = document.getElementById("new-campaign");
    if (editor) { startEditor(editor); startAudienceChoice(editor); startVariants(editor); }
    const builder = document.getElementById("segment-builder");
    if (builder) startBuilder(builder);
    new Set(Array.from(document.querySelectorAll("[data-id-from]"), (input) => input.closest("fieldset") || input.form))
      .forEach(startButtonIds);
  });
})();
