//! kam-cdr-bridge: tails Kamailio's acc_json file and publishes every line to JetStream.
