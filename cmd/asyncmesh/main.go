// Command asyncmesh is asyncmesh's one command line: it runs asyncmesh in
// front of a service (sidecar), checks rules files (validate) and is the
// operator's client of the collector's operator API (get, search, tail,
// replay, endpoints, rules):
//
//	asyncmesh sidecar -upstream 127.0.0.1:8080 (-rules rules.yaml | -async /slow)
//	asyncmesh validate rules.yaml
//	asyncmesh search --status dead --since 1h
//	asyncmesh get ID
//	asyncmesh tail --rule slow
//	asyncmesh replay ID | asyncmesh replay --status dead --since 1h [--dry-run] [--yes]
//	asyncmesh endpoints [--disabled] | asyncmesh endpoints enable|disable ID
//	asyncmesh rules [--check]
//	asyncmesh completion bash|zsh|fish
//
// The operator commands find the API in --server (or $ASYNCMESH_SERVER) and
// the operator's bearer token in --token-file (or $ASYNCMESH_TOKEN,
// $ASYNCMESH_TOKEN_FILE); without either, in the data directory of a running
// `asyncmesh sidecar` (--data, the same default), which writes both there.
// Tables for people by default, -o json for scripts (the API's own JSON;
// one object per line for tail). Exit codes, for scripts:
//
//	0  done
//	1  failed: the API answered an error or could not be reached; an invalid
//	   rules file; rules --check found a node that has not applied the rules
//	2  usage: an unknown command or flag, a bad value, a bulk replay
//	   without --yes and no terminal to ask
//	3  not found (the request or endpoint does not exist)
//	4  refused: the operator's token is missing or wrong, or the operator
//	   API is off
//	5  conflict: the request is not in a state that can be replayed
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"sort"
	"syscall"

	"golang.org/x/sys/unix"
)

// Exit codes (the package doc).
const (
	exitOK        = 0
	exitFailed    = 1
	exitUsage     = 2
	exitNotFound  = 3
	exitRefused   = 4
	exitConflict  = 5
	exitInterrupt = 130
)

// command is one subcommand: its synopsis and summary (for help and
// completion), its flags, and what it does with the positional arguments.
type command struct {
	name, args, summary string
	// operator commands take the global flags (server, token, output).
	operator bool
	flags    func(fs *flag.FlagSet) // adds the command's own flags
	run      func(e *env, args []string) error
}

// commands, each added by the init of its file.
var commands []*command

// order is the order of help and completion: what a new operator needs
// first, first.
var order = []string{"validate", "get", "search", "tail", "replay", "endpoints", "rules", "completion"}

// ordered is commands in order.
func ordered() []*command {
	out := slices.Clone(commands)
	slices.SortStableFunc(out, func(a, b *command) int { return slices.Index(order, a.name) - slices.Index(order, b.name) })
	return out
}

func lookup(name string) *command {
	for _, c := range commands {
		if c.name == name {
			return c
		}
	}
	return nil
}

// env is what a command runs with.
type env struct {
	ctx         context.Context
	stdin       io.Reader
	stdout      io.Writer
	stderr      io.Writer
	interactive bool // stdin is a terminal: a bulk replay may ask
	json        bool // -o json
	global      *globalFlags
	resolved    *api
}

// api is the operator API's client, resolved from the global flags on
// first use (after the command has checked its arguments).
func (e *env) api() (*api, error) {
	if e.resolved == nil {
		a, err := e.global.resolve()
		if err != nil {
			return nil, err
		}
		e.resolved = a
	}
	return e.resolved, nil
}

// usageError is a mistake on the command line (exit 2).
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return usageError{fmt.Sprintf(format, a...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr, isTerminal(os.Stdin))
	stop()
	os.Exit(code)
}

// run runs the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, interactive bool) int {
	if len(args) == 0 || args[0] == "help" && len(args) == 1 || args[0] == "-h" || args[0] == "--help" || args[0] == "-help" {
		printUsage(stdout)
		return exitOK
	}
	name := args[0]
	if name == "help" {
		name, args = args[1], []string{args[1], "--help"}
	}
	if name == "sidecar" { // flags of its own, and it runs until stopped
		if err := sidecar(ctx, args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "asyncmesh:", err)
			return exitFailed
		}
		return exitOK
	}
	c := lookup(name)
	if c == nil {
		fmt.Fprintf(stderr, "asyncmesh: unknown command %q (asyncmesh --help lists them)\n", name)
		return exitUsage
	}
	e := &env{ctx: ctx, stdin: stdin, stdout: stdout, stderr: stderr, interactive: interactive}
	fs := flag.NewFlagSet("asyncmesh "+c.name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprintf(stderr, "usage: asyncmesh %s %s (asyncmesh %s --help)\n", c.name, c.args, c.name) }
	var gf globalFlags
	if c.operator {
		gf.add(fs)
	}
	if c.flags != nil {
		c.flags(fs)
	}
	for _, a := range args[1:] {
		if a == "-h" || a == "-help" || a == "--help" {
			commandUsage(stdout, c, fs)
			return exitOK
		}
	}
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return exitUsage // the flag package printed the error and the usage
	}
	if c.operator {
		e.global = &gf
		if gf.output != "table" && gf.output != "json" {
			fmt.Fprintf(stderr, "asyncmesh %s: -o %q: want table or json\n", c.name, gf.output)
			return exitUsage
		}
		e.json = gf.output == "json"
	}
	err = c.run(e, pos)
	if err != nil {
		if ctx.Err() != nil {
			return exitInterrupt
		}
		fmt.Fprintf(stderr, "asyncmesh %s: %v\n", c.name, err)
		var u usageError
		if errors.As(err, &u) {
			fmt.Fprintf(stderr, "usage: asyncmesh %s %s (asyncmesh %s --help)\n", c.name, c.args, c.name)
		}
	}
	return exitCode(err)
}

// exitCode maps an error to the exit codes of the package doc.
func exitCode(err error) int {
	var u usageError
	var ae *apiError
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &u):
		return exitUsage
	case errors.As(err, &ae):
		switch {
		case ae.Status == 404:
			return exitNotFound
		case ae.Status == 401 || ae.Status == 403:
			return exitRefused
		case ae.Status == 409:
			return exitConflict
		}
	}
	return exitFailed
}

// parseInterspersed parses flags before, between and after positional
// arguments (asyncmesh replay ID --yes, as well as --yes ID), and returns
// the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos, args = append(pos, args[0]), args[1:]
	}
}

func printUsage(w io.Writer) {
	fmt.Fprint(w, `asyncmesh: asynchronous APIs with callbacks in front of any service, in an Envoy mesh.

usage: asyncmesh COMMAND [flags] [args]

commands:
  sidecar     run Envoy, the collector and the control plane in front of a service (sidecar -h)
`)
	for _, c := range ordered() {
		fmt.Fprintf(w, "  %-11s %s\n", c.name, c.summary)
	}
	fmt.Fprint(w, `
The operator commands (get, search, tail, replay, endpoints, rules) talk to the
collector's operator API: --server URL (or $ASYNCMESH_SERVER) with the bearer
token in --token-file (or $ASYNCMESH_TOKEN / $ASYNCMESH_TOKEN_FILE); without them,
those a running "asyncmesh sidecar" wrote into its data directory (--data).
-o json prints the API's JSON. Exit codes: 0 done, 1 failed, 2 usage, 3 not found,
4 refused (operator token), 5 conflict. asyncmesh COMMAND --help tells more.
`)
}

func commandUsage(w io.Writer, c *command, fs *flag.FlagSet) {
	fmt.Fprintf(w, "usage: asyncmesh %s %s\n\n%s\n", c.name, c.args, c.summary)
	if c.operator || c.flags != nil {
		fmt.Fprintln(w, "\nflags:")
		fs.SetOutput(w)
		fs.PrintDefaults()
	}
}

// flagNames are the flags of c, sorted (completion).
func flagNames(c *command) []string {
	fs := flag.NewFlagSet(c.name, flag.ContinueOnError)
	if c.operator {
		new(globalFlags).add(fs)
	}
	if c.flags != nil {
		c.flags(fs)
	}
	var names []string
	fs.VisitAll(func(f *flag.Flag) {
		if len(f.Name) == 1 {
			names = append(names, "-"+f.Name)
		} else {
			names = append(names, "--"+f.Name)
		}
	})
	sort.Strings(names)
	return names
}

// isTerminal reports whether f is a terminal (not a pipe, a file or
// /dev/null): only then does a bulk replay ask for confirmation.
func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
