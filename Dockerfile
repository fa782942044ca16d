# dealflow: one image for both processes.
#   docker run IMAGE                   -> `dealflow api` (HTTP on $DEALFLOW_API_PORT, applies DB migrations)
#   docker run IMAGE dealflow worker   -> the Temporal worker (Prometheus on $DEALFLOW_METRICS_PORT)
FROM python:3.11-slim

# In a container the API must listen on every interface (the app's default is 127.0.0.1).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DEALFLOW_API_HOST=0.0.0.0 \
    DEALFLOW_API_PORT=8000 \
    DEALFLOW_METRICS_PORT=9464

RUN groupadd --system --gid 10001 dealflow \
 && useradd --system --uid 10001 --gid dealflow --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin dealflow

# Build from a throwaway copy of the source; only the installed package stays in the image.
COPY . /tmp/src
RUN pip install /tmp/src && rm -rf /tmp/src

WORKDIR /app
RUN chown dealflow:dealflow /app
USER dealflow:dealflow

EXPOSE 8000

# No curl in -slim: ask /healthz with the standard library. Non-2xx or no answer -> exit 1.
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('DEALFLOW_API_PORT', '8000') + '/healthz', timeout=4)"]

CMD ["dealflow", "api"]
