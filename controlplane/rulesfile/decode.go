package rulesfile

import (
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/asyncmesh/asyncmesh/internal/rules"
)

// Pos is a place in the file.
type Pos struct{ Line, Col int }

// Error is one problem in a rules file: file:line:col: path: message.
type Error struct {
	File string
	Pos  Pos
	Path string
	Msg  string
}

func (e *Error) Error() string {
	loc := e.File
	if e.Pos.Line > 0 {
		loc += ":" + strconv.Itoa(e.Pos.Line)
	}
	if e.Pos.Col > 0 {
		loc += ":" + strconv.Itoa(e.Pos.Col)
	}
	if e.Path == "" {
		return loc + ": " + e.Msg
	}
	return loc + ": " + e.Path + ": " + e.Msg
}

// Errors are all the problems found, in file order.
type Errors []*Error

func (es Errors) Error() string {
	s := make([]string, len(es))
	for i, e := range es {
		s[i] = e.Error()
	}
	return strings.Join(s, "\n")
}

// decoder decodes a yaml.Node tree into Go values strictly, by their json
// tags: unknown keys, duplicate keys and wrong types are errors with the
// position of the offending node. It records the position of every path it
// decodes so that later validation errors can point into the file too.
//
// Its work is bounded (see the package doc): a budget of steps, where every node
// decoded costs one step plus the bytes of its value and of its path, is
// spent across the whole decode, aliases included. An alias is decoded again
// every time it is used (that is what lets an anchor nested through
// callback.select.targets multiply the work by the number of targets at each
// level: 1.3 KB did minutes and gigabytes), so a file whose aliases would
// repeat more than the budget is refused, as yaml.v3 refuses excessive alias
// ratios when it decodes into Go values (it does not when it decodes into a
// yaml.Node, which is what strict decoding with positions needs).
type decoder struct {
	file string
	errs Errors
	pos  map[string]Pos
	// limit is the budget a file started with, for the message.
	limit int
	// budget is the steps left; over is set when it ran out (everything
	// after is skipped: one error, not one per remaining node).
	budget  int
	over    bool
	aliased bool // an alias was followed
	// via is the alias being expanded, if any: where a budget error points.
	via *yaml.Node
}

const maxErrors = 50

// decodeBudget is the number of steps a file of size bytes may take. A file
// without aliases takes about 2 steps per byte (testdata/good.yaml 1.7,
// examples/rules.yaml 1.4), up to about 15 for long flow lists of short
// items; the rest is room for anchors that many rules reuse. A step costs
// about 20ns, so a 4 KB file is refused or decoded within 10 ms, and even a
// 1 MiB bomb within a second.
func decodeBudget(size int) int { return 256<<10 + 32*size }

// spend takes the cost of decoding n at path from the budget and reports
// whether there was enough.
func (d *decoder) spend(n *yaml.Node, path string) bool {
	if d.over {
		return false
	}
	d.budget -= 1 + len(n.Value) + len(path)
	if d.budget >= 0 {
		return true
	}
	d.over = true
	if len(path) > 100 { // nested aliases make long paths: the start says where
		path = path[:100] + "…"
	}
	if d.via == nil && !d.aliased {
		d.fail(n, path, "too much to decode: more than %d steps (nodes plus the bytes of their values and paths)", d.limit)
		return false
	}
	at := n
	if d.via != nil {
		at = d.via
	}
	d.fail(at, path, "too many alias expansions: decoding this file would take more than %d steps (nodes plus the bytes of their values and paths; an alias is decoded again wherever it is used): use fewer or less nested aliases", d.limit)
	return false
}

func (d *decoder) fail(n *yaml.Node, path, format string, args ...any) {
	if len(d.errs) < maxErrors {
		d.errs = append(d.errs, &Error{File: d.file, Pos: Pos{n.Line, n.Column}, Path: path, Msg: fmt.Sprintf(format, args...)})
	}
}

var (
	durationType = reflect.TypeFor[rules.Duration]()
	nodeType     = reflect.TypeFor[yaml.Node]()
)

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if n.Tag == "!!null" {
			return "null"
		}
		return "the scalar " + strconv.Quote(n.Value)
	}
	return "something else"
}

func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind == yaml.AliasNode && d.via == nil {
		// The outermost alias: the one written where the expansion starts.
		d.via, d.aliased = n, true
		defer func() { d.via = nil }()
	}
	for n.Kind == yaml.AliasNode {
		// yaml.v3 refuses an alias to an anchor not defined before it, so
		// this cannot loop; a nil target would be its bug, not the file's.
		if n.Alias == nil {
			d.fail(n, path, "alias %q to nothing", n.Value)
			return
		}
		n = n.Alias
	}
	if !d.spend(n, path) {
		return
	}
	if path != "" {
		d.pos[path] = Pos{n.Line, n.Column}
	}
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return // absent: the zero value, defaults apply later
	}
	if v.Type() == nodeType {
		v.Set(reflect.ValueOf(*n)) // kept as written, not decoded (LoadSecrets)
		return
	}
	if v.Type() == durationType {
		if n.Kind != yaml.ScalarNode {
			d.fail(n, path, "want a duration such as 30s, got %s", kindName(n))
			return
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil || dur < 0 {
			d.fail(n, path, "%q is not a duration such as 30s or 1m30s", n.Value)
			return
		}
		v.SetInt(int64(dur))
		return
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			v.Set(reflect.New(v.Type().Elem()))
		}
		d.decode(n, v.Elem(), path)
	case reflect.Struct:
		d.decodeStruct(n, v, path)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(n, path, "want a mapping, got %s", kindName(n))
			return
		}
		if len(n.Content)/2 > MaxEntries {
			d.fail(n, path, "%d entries, more than %d", len(n.Content)/2, MaxEntries)
			return
		}
		if v.IsNil() {
			v.Set(reflect.MakeMap(v.Type()))
		}
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if seen[k.Value] {
				d.fail(k, join(path, k.Value), "duplicate key")
				continue
			}
			seen[k.Value] = true
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, e, join(path, k.Value))
			v.SetMapIndex(reflect.ValueOf(k.Value), e)
		}
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n, path, "want a list, got %s", kindName(n))
			return
		}
		if len(n.Content) > MaxEntries {
			d.fail(n, path, "%d entries, more than %d", len(n.Content), MaxEntries)
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, s.Index(i), path+"["+strconv.Itoa(i)+"]")
		}
		v.Set(s)
	case reflect.String:
		// A timestamp (callers[].signing[].until) is kept as written.
		if n.Kind != yaml.ScalarNode || n.Tag != "!!str" && n.Tag != "!!timestamp" {
			d.fail(n, path, "want a string, got %s", kindName(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Bool:
		b, err := strconv.ParseBool(n.Value)
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" || err != nil {
			d.fail(n, path, "want true or false, got %s", kindName(n))
			return
		}
		v.SetBool(b)
	case reflect.Int, reflect.Int64, reflect.Int32:
		i, err := strconv.ParseInt(n.Value, 0, 64)
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" || err != nil || v.OverflowInt(i) {
			d.fail(n, path, "want an integer, got %s", kindName(n))
			return
		}
		v.SetInt(i)
	case reflect.Float64: // callback.rateLimit.perSecond
		f, err := strconv.ParseFloat(n.Value, 64)
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" && n.Tag != "!!float" || err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
			d.fail(n, path, "want a number, got %s", kindName(n))
			return
		}
		v.SetFloat(f)
	default:
		d.fail(n, path, "cannot decode into %s", v.Type())
	}
}

func (d *decoder) decodeStruct(n *yaml.Node, v reflect.Value, path string) {
	if n.Kind != yaml.MappingNode {
		d.fail(n, path, "want a mapping, got %s", kindName(n))
		return
	}
	fields := map[string]reflect.Value{}
	var names []string
	collectFields(v, fields, &names)
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := n.Content[i], n.Content[i+1]
		p := join(path, k.Value)
		f, ok := fields[k.Value]
		switch {
		case !ok:
			d.fail(k, p, "unknown key (known: %s)", strings.Join(names, ", "))
		case seen[k.Value]:
			d.fail(k, p, "duplicate key")
		default:
			seen[k.Value] = true
			d.decode(val, f, p)
		}
	}
}

// collectFields maps the json names of v's exported fields, embedded structs
// inlined.
func collectFields(v reflect.Value, out map[string]reflect.Value, names *[]string) {
	t := v.Type()
	for i := range t.NumField() {
		sf := t.Field(i)
		if !sf.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(sf.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if sf.Anonymous && name == "" && sf.Type.Kind() == reflect.Struct {
			collectFields(v.Field(i), out, names)
			continue
		}
		if name == "" {
			name = sf.Name
		}
		out[name] = v.Field(i)
		*names = append(*names, name)
	}
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}
