# One image, every role: SERVICE_TYPE=api | worker | beat | flower | migrate picks what it runs.
#
#   docker build -t stack .            # python:3.11-slim, the dependencies from PyPI
#   docker build --build-arg BASE_IMAGE=stack-local/python:3.11 -t stack .
#                                      # any Debian-like base with python3 >= 3.11 and its venv
#                                      # module (CI builds one without a registry)
# A wheels/ dir in the build context makes the build use no index at all: .ci/compose-roundtrip
# fills it with `pip wheel` (run by a Python of the base's version, so markers resolve alike).
# Classic builder syntax: docker-compose 1.29 builds with it.
ARG BASE_IMAGE=python:3.11-slim

# --- what to install: only its result is copied on, so the dependency layer below is rebuilt
# when the dependency list or the wheels change, not on any other edit of pyproject.toml -----
FROM ${BASE_IMAGE} AS requirements
# `wheel[s]` matches the optional wheels/ dir without failing when it is absent (pyproject.toml
# keeps the COPY non-empty).
COPY pyproject.toml wheel[s] /in/
RUN mkdir /out \
 && python3 -c 'import tomllib, sys; sys.stdout.write("\n".join(tomllib.load(open("/in/pyproject.toml", "rb"))["project"]["dependencies"]))' >/out/requirements.txt \
 && if ls /in/*.whl >/dev/null 2>&1; then cp /in/*.whl /out/; fi

# --- the dependencies, in a venv: Debian's own python3 refuses pip installs into the system
# (PEP 668); the slim image does not care, so both bases install the same way ------------------
FROM ${BASE_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore \
    PATH=/opt/venv/bin:$PATH
RUN python3 -m venv /opt/venv
COPY --from=requirements /out /wheels/
# With wheels, pip reads them alone, for builds that cannot reach PyPI: the venv's site-wide
# pip.conf (also seen by the isolated build of the project below) turns the index off.
RUN if ls /wheels/*.whl >/dev/null 2>&1; then \
        printf '[global]\nno-index = true\nfind-links = /wheels\n' >/opt/venv/pip.conf; \
    fi \
 && pip install --requirement /wheels/requirements.txt

# --- the project as a wheel: the only thing rebuilt when the code changes -----------------------
FROM deps AS project
WORKDIR /src
COPY pyproject.toml README.md ./
COPY stack ./stack
COPY app ./app
RUN pip wheel --no-deps --wheel-dir /dist .

# --- the image: the base, the venv, the project; no wheels, no compilers, no build tools --------
FROM ${BASE_IMAGE}
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 LANG=C.UTF-8 PATH=/opt/venv/bin:$PATH \
    PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 HOST=0.0.0.0 APP_ENV=production
# The data dir (beat's schedule, job outputs in .stack/files) is created here and owned by the
# app's user, so a named volume mounted on it starts out writable by that user.
RUN useradd --create-home --uid 10001 stack \
 && mkdir -p /srv/.stack/files && chown -R stack /srv/.stack
WORKDIR /srv
COPY --from=deps /opt/venv /opt/venv
COPY --from=project /dist /tmp/dist
RUN rm -f /opt/venv/pip.conf \
 && pip install --no-deps --no-index /tmp/dist/*.whl && rm -rf /tmp/dist
USER stack
EXPOSE 8000 5555
# `stack run` with no role reads SERVICE_TYPE; a missing one is a clear error, not a silent API.
CMD ["stack", "run"]
