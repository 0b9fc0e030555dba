# One workmesh node per container. Build: docker build -t workmesh .
# Run:   workmesh mesh-key mesh.key    # once; the same key for every node of the mesh
#        docker run -e WORKMESH_API_TOKEN=secret -v "$PWD/mesh.key:/run/secrets/mesh_key:ro" \
#            -p 7000:7000/udp -p 8000:8000 -v wm:/var/lib/workmesh workmesh
# A 3-node mesh: compose.yaml. Everything here is described in docs/operations.md.
FROM python:3.12-slim

# The node runs as an unprivileged user; its identity and facts live in the volume.
RUN useradd --system --uid 10001 --home-dir /var/lib/workmesh --create-home workmesh

WORKDIR /src
COPY pyproject.toml README.md ./
COPY workmesh ./workmesh
COPY node ./node
COPY dht ./dht
COPY crypto ./crypto
COPY api ./api
RUN pip install --no-cache-dir . && rm -rf /src

USER workmesh
WORKDIR /var/lib/workmesh
VOLUME ["/var/lib/workmesh"]
# 7000/udp: the DHT, gossip and leases (peers); 8000/tcp: the REST API (clients).
EXPOSE 7000/udp 8000/tcp
ENV PYTHONUNBUFFERED=1 WORKMESH_API=http://127.0.0.1:8000

HEALTHCHECK --interval=10s --timeout=3s --start-period=10s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]

# Binding 0.0.0.0 needs a token for writes (WORKMESH_API_TOKEN) and a mesh key
# (a private mesh: mount the file of `workmesh mesh-key` at /run/secrets/mesh_key).
ENTRYPOINT ["workmesh"]
CMD ["start", "--host", "0.0.0.0", "--p2p-port", "7000", "--api-port", "8000", "--data-dir", "/var/lib/workmesh", "--mesh-key", "/run/secrets/mesh_key", "--log-format", "json"]
