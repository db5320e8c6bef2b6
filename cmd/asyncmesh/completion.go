package main

import (
	"fmt"
	"io"
	"strings"
)

func init() {
	commands = append(commands, &command{
		name: "completion", args: "bash|zsh|fish",
		summary: "print a shell completion script (bash: source <(asyncmesh completion bash))",
		run: func(e *env, args []string) error {
			if len(args) != 1 {
				return usagef("want bash, zsh or fish")
			}
			return completion(e.stdout, args[0])
		},
	})
}

// subcommands are the words after a command that completion offers.
var subcommands = map[string][]string{
	"endpoints":  {"get", "enable", "disable"},
	"completion": {"bash", "zsh", "fish"},
}

// completion writes the script for shell, made from the command table so
// that it never disagrees with it.
func completion(w io.Writer, shell string) error {
	names := []string{"sidecar"}
	for _, c := range ordered() {
		names = append(names, c.name)
	}
	switch shell {
	case "bash", "zsh":
		var cases strings.Builder
		for _, c := range ordered() {
			words := append(append([]string{}, subcommands[c.name]...), flagNames(c)...)
			switch c.name {
			case "validate": // files, below
				continue
			case "completion":
				words = subcommands[c.name]
			}
			fmt.Fprintf(&cases, "    %s) words=%q ;;\n", c.name, strings.Join(words, " "))
		}
		script := `# asyncmesh completion (asyncmesh completion ` + shell + `)
_asyncmesh() {
  local cur=${COMP_WORDS[COMP_CWORD]} words
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=($(compgen -W "` + strings.Join(names, " ") + ` help" -- "$cur"))
    return
  fi
  case ${COMP_WORDS[1]} in
` + cases.String() + `    validate) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    *) words="" ;;
  esac
  COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
`
		if shell == "zsh" {
			script += "autoload -U +X bashcompinit && bashcompinit\n"
		}
		script += "complete -F _asyncmesh asyncmesh\n"
		_, err := io.WriteString(w, script)
		return err
	case "fish":
		var b strings.Builder
		b.WriteString("# asyncmesh completion (asyncmesh completion fish | source)\ncomplete -c asyncmesh -f\n")
		for _, c := range ordered() {
			fmt.Fprintf(&b, "complete -c asyncmesh -n __fish_use_subcommand -a %s -d %q\n", c.name, oneLine(c.summary, 50))
			for _, s := range subcommands[c.name] {
				fmt.Fprintf(&b, "complete -c asyncmesh -n '__fish_seen_subcommand_from %s' -a %s\n", c.name, s)
			}
			if c.name != "completion" {
				for _, f := range flagNames(c) {
					opt := "-l " + strings.TrimPrefix(f, "--")
					if len(f) == 2 { // -o
						opt = "-s " + f[1:]
					}
					fmt.Fprintf(&b, "complete -c asyncmesh -n '__fish_seen_subcommand_from %s' %s\n", c.name, opt)
				}
			}
		}
		b.WriteString("complete -c asyncmesh -n '__fish_seen_subcommand_from validate' -F\n")
		fmt.Fprintf(&b, "complete -c asyncmesh -n __fish_use_subcommand -a sidecar -d %q\n", "run asyncmesh in front of a service")
		_, err := io.WriteString(w, b.String())
		return err
	}
	return usagef("%q: want bash, zsh or fish", shell)
}
