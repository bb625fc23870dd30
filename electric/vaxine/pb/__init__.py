"""Generated protobuf module of the Antidote PB API (see `electric.pb_generate`); do not edit it by hand."""
