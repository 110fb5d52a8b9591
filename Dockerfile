FROM python:3.12-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY pacsor ./pacsor
COPY consumers ./consumers
COPY streams ./streams
RUN pip install --no-cache-dir . && useradd --system --uid 1000 pacsor
USER pacsor
EXPOSE 1040
ENTRYPOINT ["pacsor"]
CMD ["up"]
