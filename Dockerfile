# Fanfare image: one image, three roles (API by default; the stream workers and the one-shot
# migration override the command, see compose.yaml).

# Dependencies are installed by npm from the committed package-lock.json, the one lockfile of the
# project (`npm ci` in CI and in `npm start`). `bun install` would have to migrate that lock to
# bun.lock and could resolve differently; npm ci installs exactly what CI tested.
#   --omit=dev       no drizzle-kit, typescript, test tools
#   --omit=optional  the only optional packages are the Bun binaries behind the `bun` npm package:
#                    the runtime image already is Bun
#   --ignore-scripts no install scripts run (there are no native modules: PGlite is WebAssembly)
FROM node:20-bookworm-slim AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --omit=optional --ignore-scripts --no-audit --no-fund

# Same Bun as package.json pins for development.
FROM oven/bun:1.4.5-slim
WORKDIR /app
ENV NODE_ENV=production \
    HOST=0.0.0.0 \
    PORT=3000
COPY --from=deps --chown=root:root /app/node_modules ./node_modules
COPY --chown=root:root package.json tsconfig.json ./
COPY --chown=root:root core ./core
COPY --chown=root:root api ./api
COPY --chown=root:root stream-workers ./stream-workers
COPY --chown=root:root migrations ./migrations
COPY --chown=root:root vendor ./vendor
# Code stays owned by root and read-only to the process. The unprivileged user is our own rather
# than relying on the base image's; it only needs a writable data directory (embedded mode, unused
# when DATABASE_URL and NATS_URL are set).
RUN useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin fanfare \
 && mkdir -p /app/.data && chown fanfare:fanfare /app/.data
USER 10001:10001
EXPOSE 3000
CMD ["bun", "api/src/main.ts"]
