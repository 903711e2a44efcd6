# Builds the release `cohort` binary and ships it alone on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p cohort-cli --locked

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir /data && chown 65532:65532 /data
COPY --from=build /src/target/release/cohort /usr/local/bin/cohort
USER 65532:65532
# A SQLite database, when no --db is given, lands here.
WORKDIR /data
ENTRYPOINT ["cohort"]
