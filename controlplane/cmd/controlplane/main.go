// Command controlplane is a stub: the xDS control plane is not built yet (see the
// controlplane package doc). It exits with an error saying so.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Fprintln(os.Stderr, "controlplane: not implemented yet; rules are static in envoy.yaml (see controlplane/doc.go)")
	os.Exit(2)
}
