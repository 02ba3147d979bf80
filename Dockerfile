# One image for every pgclip role (migrate, api, worker); compose.yaml picks the command.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app

# CPU-only torch keeps the image small; on a GPU host install the CUDA build instead.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md alembic.ini ./
COPY pgclip ./pgclip
COPY core ./core
COPY application ./application
COPY api ./api
COPY db ./db
COPY workers ./workers
COPY migrations ./migrations
RUN pip install -e . && python -m compileall -q pgclip api db workers migrations

# The processes run as a user of their own, with a home (not nobody: its home does not
# exist, and open_clip downloads some weights under ~/.cache). /cache holds every cache
# (CLIP weights through HF_HOME and TORCH_HOME, pgclip's checkpoint digests through
# XDG_CACHE_HOME). It is created and given to that user here, before VOLUME: a named
# volume starts as a copy of the image's directory, owner included, and changes made to
# a path after it is declared a VOLUME are discarded.
RUN useradd --system --uid 10001 --user-group --create-home --home-dir /home/pgclip \
        --shell /usr/sbin/nologin pgclip \
    && mkdir -p /cache \
    && chown pgclip:pgclip /cache
ENV HOME=/home/pgclip XDG_CACHE_HOME=/cache HF_HOME=/cache/huggingface TORCH_HOME=/cache/torch
VOLUME /cache

USER pgclip
EXPOSE 8000
CMD ["pgclip", "--help"]
