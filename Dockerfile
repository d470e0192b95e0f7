# machinaftp in a container: a Rust build stage, then a slim Debian runtime with only the binary
# (it links libstdc++, which the slim image has) and the built-in sample mesh.
#
#   docker build -t machinaftp .
#   docker network create machinaftp
#   docker run --rm -d --name a --network machinaftp machinaftp --server -f sample.stl -H 0.0.0.0 -p 8080 --once
#   docker run --rm --name b --network machinaftp machinaftp --client -f output.stl -H a -p 8080
#
# README.md walks through both topologies and compose.yaml.

FROM rust:1.95-slim-bookworm AS build
# libzmq is built from source by the zmq crate: it needs a C++ compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
COPY src ./src
RUN cargo build --release --locked --bin machinaftp \
 && strip target/release/machinaftp \
 && ./target/release/machinaftp sample /src/sample.stl

FROM debian:bookworm-slim
# A user of its own: nothing in the container runs as root.
RUN useradd --create-home --uid 10001 --user-group machina \
 && mkdir /data \
 && chown machina:machina /data
COPY --from=build /src/target/release/machinaftp /usr/local/bin/machinaftp
COPY --from=build --chown=machina:machina /src/sample.stl /data/sample.stl
USER machina
# Files are read and written here: mount a volume on it to keep them (-v "$PWD:/data").
WORKDIR /data
# The data channel and the return channel (PORT + 1).
EXPOSE 8080 8081
ENTRYPOINT ["machinaftp"]
CMD ["--help"]
