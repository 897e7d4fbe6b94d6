# The one image every buttoncast service runs (worker, beat, webhooks, migrate, sandbox):
#   docker build -t buttoncast .   then   docker run --rm buttoncast --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Installed as root into the system site-packages; everything runs as an unprivileged user.
WORKDIR /src
COPY . .
RUN pip install . && rm -rf /src

RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin buttoncast
USER buttoncast
# Writable: `buttoncast beat` keeps its celerybeat-schedule here (only last-run times; losing it is harmless).
WORKDIR /home/buttoncast

# 9808 worker metrics (METRICS_PORT), 8080 HTTP API and console, 8088 webhook receiver, 8099 sandbox
EXPOSE 9808 8080 8088 8099
ENTRYPOINT ["buttoncast"]
CMD ["--help"]
