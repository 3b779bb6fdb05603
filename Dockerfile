# One image for both roles: `broadsheet primary` or `broadsheet replica`
# (the command), configured by environment variables alone.
#
# Build it with scripts/image, which first puts into the build context what
# the image carries: the pinned LiteFS binary (bin/litefs, built by
# scripts/setup) and wheels of broadsheet and its dependencies
# (build/wheels), so that the build itself downloads no Python package.
#
#   BASE_IMAGE  any Debian-based image with Python 3.11+ and its venv module
#               (default: the usual slim Python image; scripts/image uses a
#               base made locally with debootstrap where no registry is
#               reachable)
#   EXTRAS      "primary,replica" (default) or "replica" for a read-node-only
#               image without the primary's packages (apsw, FastAPI, …)
#   READ_NODE_PLUGINS
#               Datasette plugins for read nodes, by package name
#               ("datasette-cluster-map"): installed from build/wheels and
#               the image's default BROADSHEET_READ_NODE_PLUGINS
#   TEAM_PLUGINS
#               packaged Datasette plugins for the team's Datasette on the
#               primary ("datasette-upload-csvs datasette-edit-schema"):
#               installed from build/wheels when EXTRAS has the primary, and
#               the image's default BROADSHEET_TEAM_PLUGINS. A read node's
#               Datasette loads its own list only, so they never run there.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
ARG EXTRAS=primary,replica
ARG READ_NODE_PLUGINS=""
ARG TEAM_PLUGINS=""

# fuse3 for LiteFS's mount, tini as PID 1 (signals, zombies). A base that
# already has them (the debootstrap one) needs no package index.
RUN if ! command -v fusermount3 >/dev/null || ! command -v tini >/dev/null; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3 tini \
      && rm -rf /var/lib/apt/lists/*; \
    fi

COPY build/wheels /tmp/wheels
RUN python3 -m venv /opt/broadsheet \
    && /opt/broadsheet/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels "broadsheet[${EXTRAS}]" \
         $(echo "${READ_NODE_PLUGINS}" | tr , " ") \
         $(case "${EXTRAS}" in *primary*) echo "${TEAM_PLUGINS}" | tr , " ";; esac) \
    && rm -rf /tmp/wheels

# broadsheet finds litefs beside its Python and the packaged litefs.yml;
# both are named here too, for anyone reading the image's environment.
COPY bin/litefs /opt/broadsheet/bin/litefs
COPY litefs.yml /etc/litefs.yml

ENV PATH=/opt/broadsheet/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    BROADSHEET_LITEFS=/opt/broadsheet/bin/litefs \
    BROADSHEET_LITEFS_CONFIG=/etc/litefs.yml \
    BROADSHEET_ROOT=/var/lib/broadsheet \
    BROADSHEET_HOST=:: \
    BROADSHEET_READ_NODE_PLUGINS=${READ_NODE_PLUGINS} \
    BROADSHEET_TEAM_PLUGINS=${TEAM_PLUGINS}

# LiteFS's data (and on the primary, data.db's): keep it on a volume.
VOLUME /var/lib/broadsheet
EXPOSE 8001

ENTRYPOINT ["tini", "--", "broadsheet"]
CMD ["replica"]
