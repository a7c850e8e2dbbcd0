# One image, every role: SERVICE_TYPE=api | worker | beat | flower | migrate picks what it runs.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 HOST=0.0.0.0 APP_ENV=production
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY stack ./stack
COPY app ./app
RUN pip install . && useradd --create-home --uid 10001 stack && mkdir -p /srv/.stack && chown stack /srv/.stack
USER stack
EXPOSE 8000 5555
# `stack run` with no role reads SERVICE_TYPE; a missing one is a clear error, not a silent API.
CMD ["stack", "run"]
