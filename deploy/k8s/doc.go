// Package k8s holds asyncmesh's Kubernetes deployment (the Helm chart in
// chart/asyncmesh) and the tests that check it against the real API types,
// in a module of its own so that Kubernetes', Istio's, Envoy Gateway's and
// Helm's modules never enter the product binaries' module graph.
//
// The tests render the chart with Helm's own engine for every values
// variant (chart/asyncmesh/ci/*.yaml and the defaults) and decode every
// document strictly into its type: k8s.io/api for the workloads, Istio's
// client-go objects with their proto specs read by protojson (which refuses
// unknown fields, unlike the lenient UnmarshalJSON Istio generates), and
// Envoy Gateway's api/v1alpha1. They also render controlplane render's
// output for the chart's rules and decode it the same way, the patch values
// those types leave untyped (EnvoyFilter, EnvoyPatchPolicy) into Envoy's
// own types, apply the EnvoyPatchPolicy as Envoy Gateway would
// (egpatch_test.go), and check what the types cannot: that probes reach a
// port bound outside loopback, that every secret the rules declare has a
// source in the pod, that the rules ConfigMap is mounted so that edits
// reach the control plane, that the module the rendered filter loads is
// where the chart mounts the filter image. docs/deploy.md says how to use
// all of it.
package k8s
