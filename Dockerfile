FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY producer ./producer
COPY workers ./workers
RUN pip install --no-cache-dir .
RUN useradd --create-home betstream && mkdir -p /data && chown betstream /data
USER betstream
ENV BETSTREAM_DB=/data/betstream.sqlite3 BETSTREAM_LOG_FORMAT=json
ENTRYPOINT ["betstream"]
