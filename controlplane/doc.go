// Package controlplane is asyncmesh's control plane: rules.yaml (package
// rulesfile, documented field by field in docs/rules.md) is decoded strictly,
// validated and served over xDS (package xds) to every Envoy as the filter's
// ECDS configuration, with hot reload on change or SIGHUP. The command is in
// controlplane/cmd/controlplane (serve, validate).
//
// Still to come: LDS/RDS/CDS with per-route annotations for the example
// sidecar, and collectors subscribing over ADS. Until collectors do, the filter
// copies the matched rule's callback, retry and timeout into each intake
// envelope, so collectors need no rules of their own.
package controlplane
