# One image for every pgclip role (migrate, api, worker); compose.yaml picks the command.
FROM python:3.11-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
WORKDIR /app

# CPU-only torch keeps the image small; on a GPU host install the CUDA build instead.
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu

COPY pyproject.toml README.md alembic.ini ./
COPY pgclip ./pgclip
COPY api ./api
COPY db ./db
COPY workers ./workers
COPY migrations ./migrations
RUN pip install -e .

# Model weights are cached here; mount a volume to keep them between containers.
ENV HF_HOME=/cache/huggingface
VOLUME /cache

USER nobody
EXPOSE 8000
CMD ["pgclip", "--help"]
