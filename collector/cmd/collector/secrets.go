package main

import (
	"fmt"
	"log/slog"

	"github.com/asyncmesh/asyncmesh/collector"
	"github.com/asyncmesh/asyncmesh/controlplane/rulesfile"
)

// secretSource is how this collector resolves secret references: the
// declarations the control plane sends with the rules (live, when rules is
// the -xds subscription), then those of the -rules file's secrets: section,
// then ASYNCMESH_SECRET_<REF> and -secrets-dir.
func secretSource(o options, live collector.RuleSource, log *slog.Logger) (collector.SecretSource, error) {
	s := collector.SecretSource{Dir: o.secretsDir}
	if d, ok := live.(collector.Declarations); ok {
		s.Declared = append(s.Declared, d)
	}
	if o.rulesPath != "" {
		decls, err := rulesfile.LoadSecrets(o.rulesPath)
		if err != nil {
			return s, fmt.Errorf("-rules: %w", err)
		}
		s.Declared = append(s.Declared, collector.StaticDeclarations(decls))
		log.Info("collector: secret declarations read", "file", o.rulesPath, "secrets", len(decls))
	}
	return s, nil
}
