FROM python:3.12-slim
WORKDIR /app
# curl: the original gateway's scripts ask the hl7 container `curl http://localhost:8000/config/`.
RUN apt-get update && apt-get install -y --no-install-recommends curl \
    && rm -rf /var/lib/apt/lists/*
# A regular (not --system) account: uid 1000 is outside the system range, and volumes mounted at
# /var/lib/pacsor and /var/lib/pacsor-demo start owned by it.
RUN useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin pacsor \
    && install -d -o pacsor -g pacsor /var/lib/pacsor /var/lib/pacsor-demo
COPY pyproject.toml README.md ./
COPY pacsor ./pacsor
COPY consumers ./consumers
COPY streams ./streams
RUN pip install --no-cache-dir . && rm -rf /app/pacsor /app/consumers /app/streams
USER pacsor
ENV PACSOR_DATA_DIR=/var/lib/pacsor
EXPOSE 1040
ENTRYPOINT ["pacsor"]
CMD ["up"]
