# The nginx-rtmp origin of docker-compose.yml, from Debian's packages (the same module the
# end-to-end tests compare rtmpx with).
FROM debian:bookworm-slim
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light libnginx-mod-rtmp \
 && rm -rf /var/lib/apt/lists/*
COPY deploy/nginx-origin.conf /etc/nginx/nginx.conf
EXPOSE 1935
STOPSIGNAL SIGQUIT
CMD ["nginx", "-g", "daemon off;"]
