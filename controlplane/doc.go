// Package controlplane is asyncmesh's control plane: rules.yaml (package
// rulesfile, documented field by field in docs/rules.md) is decoded strictly,
// validated and served over xDS (package xds) to every Envoy as the filter's
// ECDS configuration, with hot reload on change or SIGHUP. The command is in
// controlplane/cmd/controlplane (serve, validate).
//
// Three ways to run a sidecar: static rules in envoy.yaml; the filter's rules
// by ECDS with the mesh's own listener and routes (envoy-xds.yaml); or
// everything from this control plane, routes with per-route annotations
// included (envoy-ads.yaml and the rules file's sidecar: section).
// Collectors subscribe over ADS too (collector/xdsrules) and apply rule
// changes to records in flight; without that, the envelope's copy of the
// rule's callback, retry and timeout applies.
package controlplane
