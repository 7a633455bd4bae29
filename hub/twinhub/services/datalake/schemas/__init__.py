"""JSON schemas twinhub ships itself (a package so that installs carry its ``*.json``)."""
