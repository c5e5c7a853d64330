# A stand-in for mongo:7.0 for scripts/test-containers only: no MongoDB server image can be
# pulled or built on the machines CI runs on, so this runs nx-27017 (PyPI; the MongoDB wire
# protocol on SQLite, the server the test suite uses) with its data in /data/db, the volume
# docker-compose.yml mounts. It is never part of what users run. pip is told to trust the
# system's CA bundle, which includes the machine's own CAs (scripts/container-images puts them
# in the base image) for egress through a TLS proxy.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates python3 python3-pip \
    && PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
       python3 -m pip install --no-cache-dir --break-system-packages nx-27017==0.8.1 \
    && apt-get purge -y python3-pip && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 999 --home-dir /data mongodb \
    && mkdir -p /data/db && chown mongodb:mongodb /data/db
USER 999:999
EXPOSE 27017
# mongo's own image takes mongod's flags as its command; this one takes nx-27017's.
ENTRYPOINT ["python3", "-c", "import sys; from nx_27017.nx_27017 import main; sys.exit(main())", \
            "--db", "/data/db/plughost.db", "--pid-file", "/data/db/nx.pid", \
            "--log-file", "/data/db/nx.log"]
CMD ["--host", "0.0.0.0", "--port", "27017"]
