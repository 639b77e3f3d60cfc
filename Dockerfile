FROM python:3.11-slim
WORKDIR /app
# Exactly the versions the suite ran with (hashes checked); `make lock` regenerates them.
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes --no-deps -r requirements.lock
COPY producer ./producer
COPY workers ./workers
RUN useradd --create-home --uid 1000 betstream && mkdir -p /data && chown betstream /data
USER betstream
# Run from the source tree: nothing is built or fetched beyond the lock.
ENV PYTHONPATH=/app BETSTREAM_DB=/data/betstream.sqlite3 BETSTREAM_LOG_FORMAT=json
ENTRYPOINT ["python", "-m", "workers.cli"]
