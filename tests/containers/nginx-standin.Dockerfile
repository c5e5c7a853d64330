# A stand-in for the official nginx:1.27 image (Debian-based, the one docker-compose.yml names)
# for scripts/test-containers only, where no registry can be reached: Debian's own nginx laid out
# as the official image is (conf.d/default.conf, logs to the container's output, no daemon).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends nginx \
    && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log \
    && ln -sf /dev/stderr /var/log/nginx/error.log
EXPOSE 80
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
