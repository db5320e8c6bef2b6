// Package controlplane will serve asyncmesh's callback rules over xDS (ECDS to
// every Envoy, ADS to every collector) from a strictly decoded rules.yaml with hot
// reload. Not built yet: until it is, the rules sit in the filter's plugin
// configuration in envoy.yaml, and the filter copies the matched rule's callback,
// retry and timeout into each intake envelope so that collectors need no rules.
package controlplane
