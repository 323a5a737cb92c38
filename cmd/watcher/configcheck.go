package main

import (
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pelletier/go-toml/v2"
	"github.com/pelletier/go-toml/v2/unstable"
)

// The checker walks the TOML document against the Config struct before it
// is decoded, so that every unknown key and every value of the wrong type
// is reported at once, in the user's terms: its line, its key (with the
// target it belongs to) and what is allowed. go-toml's decoder stops at
// the first such error and names Go types ("cannot decode TOML float into
// struct field backends.Retention.MaxRecords of type int64").

// keyLines maps the keys of a document to their lines: "watcher.node",
// "target[1].retention.max_records", and "target[1]" for the [[target]]
// header of the second target.
type keyLines map[string]int

// at returns "line N: " for the first of keys that the document has, or "".
func (l keyLines) at(keys ...string) string {
	for _, k := range keys {
		if n, ok := l[k]; ok {
			return fmt.Sprintf("line %d: ", n)
		}
	}
	return ""
}

// docChecker holds the state of one walk.
type docChecker struct {
	p        *unstable.Parser
	lines    keyLines
	problems []string
	bad      []path         // keys (or tables) with a problem, to leave out of the decode
	names    []string       // target names by index, "" when absent
	arrays   map[string]int // elements seen of each array of tables, by indexed path
	newlines []int          // offsets of the '\n' of the document
}

// pathElem is one step of a key: a field, and an index for arrays.
type pathElem struct {
	name  string
	index int // -1: not an array element
}

// path is a key in a document, as steps from the root.
type path []pathElem

// dotted is the key as the user writes it: "target.retention.max_records".
func (p path) dotted() string {
	s := make([]string, len(p))
	for i, e := range p {
		s[i] = e.name
	}
	return strings.Join(s, ".")
}

// indexed is the key with array indexes, for keyLines:
// "target[1].retention.max_records".
func (p path) indexed() string {
	var b strings.Builder
	for i, e := range p {
		if i > 0 {
			b.WriteByte('.')
		}
		b.WriteString(e.name)
		if e.index >= 0 {
			fmt.Fprintf(&b, "[%d]", e.index)
		}
	}
	return b.String()
}

// where names a key for a message: `target "events": retention.max_records`
// for a key of a target, the dotted key otherwise. A target without a name
// is "the 2nd [[target]] (line 9)", with the line of its header when that
// is not line, the problem's.
func (c *docChecker) where(p path, line int) string {
	if len(p) > 0 && p[0].name == "target" && p[0].index >= 0 {
		i := p[0].index
		var t string
		if i < len(c.names) && c.names[i] != "" {
			t = fmt.Sprintf("target %q", c.names[i])
		} else {
			t = unnamedTarget(i)
			if h, ok := c.lines[p[:1].indexed()]; ok && h != line {
				t += fmt.Sprintf(" (line %d)", h)
			}
		}
		if len(p) == 1 {
			return t
		}
		return t + ": " + p[1:].dotted()
	}
	return p.dotted()
}

// problem records a problem of the key (or table) p.
func (c *docChecker) problem(p path, line int, format string, a ...any) {
	c.problems = append(c.problems, fmt.Sprintf("line %d: ", line)+fmt.Sprintf(format, a...))
	c.bad = append(c.bad, append(path(nil), p...))
}

// line is the line of node n (a key), from the offsets of the newlines.
func (c *docChecker) line(n *unstable.Node) int {
	return sort.SearchInts(c.newlines, int(n.Raw.Offset)) + 1
}

// docCheck is what checkDocument found.
type docCheck struct {
	// problems are unknown keys and values of the wrong type, each with
	// its line.
	problems []string
	// lines are the lines of the keys of the document.
	lines keyLines
	// bad are the indexed keys of the problems ("target[0].retention"):
	// the semantic checks say nothing more about them.
	bad []string
	// clean is the document without the keys of the problems, to decode
	// and check further; nil after a syntax error.
	clean []byte
}

// skip reports whether the indexed key k is, or is inside, a key with a
// problem.
func (d docCheck) skip(k string) bool {
	for _, b := range d.bad {
		if k == b || strings.HasPrefix(k, b+".") || strings.HasPrefix(k, b+"[") {
			return true
		}
	}
	return false
}

// checkDocument returns every problem of data as a config file, the lines
// of its keys, and the document without the keys that have a problem. A
// syntax error is the one problem returned: the rest of the file cannot be
// read reliably after it.
func checkDocument(data []byte) docCheck {
	var generic map[string]any
	decodeErr := toml.Unmarshal(data, &generic)
	c := &docChecker{p: &unstable.Parser{}, lines: keyLines{}, arrays: map[string]int{}}
	for i, b := range data {
		if b == '\n' {
			c.newlines = append(c.newlines, i)
		}
	}
	if ts, ok := generic["target"].([]any); ok {
		for _, t := range ts {
			name := ""
			if m, ok := t.(map[string]any); ok {
				name, _ = m["name"].(string)
			}
			c.names = append(c.names, name)
		}
	} else if decodeErr != nil {
		c.names = targetNames(data)
	}
	root := reflect.TypeFor[Config]()
	c.p.Reset(data)
	var table path // the current table
	var tableType reflect.Type = root
	tableOK := true // false under a table that was reported: its keys are not
	for c.p.NextExpression() {
		e := c.p.Expression()
		switch e.Kind {
		case unstable.Table, unstable.ArrayTable:
			table, tableType, tableOK = c.header(e, root)
		case unstable.KeyValue:
			if tableOK {
				c.keyValue(e, table, tableType)
			}
		}
	}
	if err := c.p.Error(); err != nil {
		// A syntax error: the decoder's error has its line.
		if decodeErr != nil {
			err = decodeErr
		}
		return docCheck{problems: decodeProblems(err, data)}
	}
	if decodeErr != nil {
		// A document the parser reads but the decoder refuses: a number
		// out of range (reported above in the user's terms, with any other
		// problem of the walk), a key defined twice. The decoder's own
		// message is the last resort.
		problems := c.problems
		for _, d := range decodeProblems(decodeErr, data) {
			line, _, _ := strings.Cut(d, ":")
			if !slices.ContainsFunc(problems, func(p string) bool { return strings.HasPrefix(p, line+":") }) {
				problems = append(problems, d)
			}
		}
		sortByLine(problems)
		return docCheck{problems: problems}
	}
	d := docCheck{problems: c.problems, lines: c.lines}
	for _, b := range c.bad {
		d.bad = append(d.bad, b.indexed())
		remove(generic, b)
	}
	clean, err := toml.Marshal(generic)
	if err != nil {
		d.problems = append(d.problems, err.Error())
		return d
	}
	d.clean = clean
	return d
}

// remove deletes the key p from a decoded document; an array element
// becomes an empty table, so that the indexes of the others hold.
func remove(doc map[string]any, p path) {
	m := doc
	for i, e := range p {
		last := i == len(p)-1
		if e.index < 0 {
			if last {
				delete(m, e.name)
				return
			}
			next, ok := m[e.name].(map[string]any)
			if !ok {
				return
			}
			m = next
			continue
		}
		arr, ok := m[e.name].([]any)
		if !ok {
			if arr2, ok := m[e.name].([]map[string]any); ok {
				arr = make([]any, len(arr2))
				for j := range arr2 {
					arr[j] = arr2[j]
				}
				m[e.name] = arr
			} else {
				return
			}
		}
		if e.index >= len(arr) {
			return
		}
		if last {
			arr[e.index] = map[string]any{}
			return
		}
		next, ok := arr[e.index].(map[string]any)
		if !ok {
			return
		}
		m = next
	}
}

// header resolves a [table] or [[array]] header.
func (c *docChecker) header(e *unstable.Node, root reflect.Type) (path, reflect.Type, bool) {
	var keys []*unstable.Node
	for it := e.Key(); it.Next(); {
		keys = append(keys, it.Node())
	}
	line := c.line(keys[0])
	var p path
	t := root
	bracket := func(n int) string {
		s := make([]string, n)
		for i := range n {
			s[i] = string(keys[i].Data)
		}
		if e.Kind == unstable.ArrayTable && n == len(keys) {
			return "[[" + strings.Join(s, ".") + "]]"
		}
		return "[" + strings.Join(s, ".") + "]"
	}
	for i, k := range keys {
		last := i == len(keys)-1
		name := string(k.Data)
		f, ok := field(t, name)
		if !ok {
			c.problem(append(p, pathElem{name, -1}), line, "unknown table %s%s", bracket(i+1), suggest(name, t, p))
			return nil, nil, false
		}
		ft := deref(f.Type)
		switch {
		case ft.Kind() == reflect.Slice && deref(ft.Elem()).Kind() == reflect.Struct:
			key := append(path(nil), p...)
			key = append(key, pathElem{name, -1})
			count := c.arrays[key.indexed()]
			if last && e.Kind == unstable.ArrayTable {
				c.arrays[key.indexed()] = count + 1
				p = append(p, pathElem{name, count})
				c.lines[p.indexed()] = line
				return p, deref(ft.Elem()), true
			}
			if last {
				c.problem(key, line, "%s must be written [[%s]]: each one is a [[%s]] table", bracket(i+1), key.dotted(), key.dotted())
				return nil, nil, false
			}
			if count == 0 {
				c.problem(key, line, "%s comes before any [[%s]]", bracket(len(keys)), key.dotted())
				return nil, nil, false
			}
			p = append(p, pathElem{name, count - 1})
			t = deref(ft.Elem())
		case isTable(ft):
			p = append(p, pathElem{name, -1})
			t = ft
			if last && e.Kind == unstable.ArrayTable {
				c.problem(p, line, "%s is a table: write [%s], not [[%s]]", p.dotted(), p.dotted(), p.dotted())
				return nil, nil, false
			}
		default:
			p = append(p, pathElem{name, -1})
			c.problem(p, line, "%s is a key, not a table: write %s = %s under [%s]", p.dotted(), name, want(ft), p[:len(p)-1].dotted())
			return nil, nil, false
		}
	}
	c.lines[p.indexed()] = line
	return p, t, true
}

// keyValue checks `key = value` (the key may be dotted) in table.
func (c *docChecker) keyValue(e *unstable.Node, table path, t reflect.Type) {
	var keys []*unstable.Node
	for it := e.Key(); it.Next(); {
		keys = append(keys, it.Node())
	}
	line := c.line(keys[0])
	p := append(path(nil), table...)
	for i, k := range keys {
		name := string(k.Data)
		f, ok := field(t, name)
		if !ok {
			full := append(p, pathElem{name, -1})
			c.problem(full, line, "unknown key %q%s", full.dotted(), suggest(name, t, p))
			return
		}
		p = append(p, pathElem{name, -1})
		ft := deref(f.Type)
		if i < len(keys)-1 {
			if !isTable(ft) {
				c.problem(p, line, "%s: %s is %s, not a table", c.where(p, line), p.dotted(), want(ft))
				return
			}
			t = ft
			continue
		}
		c.value(e.Value(), p, f.Type, line)
	}
}

// value checks the value v of the key p, of Go type t.
func (c *docChecker) value(v *unstable.Node, p path, t reflect.Type, line int) {
	c.lines[p.indexed()] = line
	t = deref(t)
	bad := func(format string, a ...any) {
		c.problem(p, line, "%s: %s", c.where(p, line), fmt.Sprintf(format, a...))
	}
	raw := shownValue(v)
	got := func() string { return raw + " is " + kindName(v.Kind) }

	if reflect.PointerTo(t).Implements(reflect.TypeFor[encoding.TextUnmarshaler]()) {
		u := reflect.New(t).Interface().(encoding.TextUnmarshaler)
		switch {
		case v.Kind == unstable.String:
			if err := u.UnmarshalText(v.Data); err != nil {
				bad("%v", err)
			}
		case t == reflect.TypeFor[Percent]() && (v.Kind == unstable.Float || v.Kind == unstable.Integer):
			// A bare number is a fraction, as "0.1" is.
			if f, err := parseTOMLFloat(string(v.Data)); err != nil || !(f >= 0 && f <= 1) {
				bad("%s is not a fraction from 0 to 1 (use a string such as \"10%%\")", raw)
			}
		default:
			bad("%s; want %s", got(), want(t))
		}
		return
	}
	switch t.Kind() {
	case reflect.String:
		if v.Kind != unstable.String {
			bad("%s; want %s", got(), want(t))
		}
	case reflect.Bool:
		if v.Kind != unstable.Bool {
			bad("%s; want %s", got(), want(t))
		}
	case reflect.Int, reflect.Int64:
		if v.Kind != unstable.Integer {
			bad("%s; want %s", got(), want(t))
		} else if why := numberRange(v); why != "" {
			bad("%s", why)
		}
	case reflect.Float64:
		if v.Kind != unstable.Integer && v.Kind != unstable.Float {
			bad("%s; want %s", got(), want(t))
		} else if why := numberRange(v); why != "" {
			bad("%s", why)
		}
	case reflect.Struct:
		if v.Kind != unstable.InlineTable {
			bad("%s; want %s", got(), want(t))
			return
		}
		c.inlineTable(v, p, t)
	case reflect.Slice:
		et := deref(t.Elem())
		if v.Kind != unstable.Array {
			bad("%s; want %s", got(), want(t))
			return
		}
		key := p.indexed()
		for it := v.Children(); it.Next(); {
			el := it.Node()
			if el.Kind == unstable.Comment {
				continue
			}
			i := c.arrays[key]
			c.arrays[key] = i + 1
			ep := append(append(path(nil), p[:len(p)-1]...), pathElem{p[len(p)-1].name, i})
			if el.Kind != unstable.InlineTable {
				c.problem(ep, line, "%s: %s is %s; want %s", c.where(ep, line), shownValue(el), kindName(el.Kind), want(et))
				continue
			}
			c.lines[ep.indexed()] = line
			c.inlineTable(el, ep, et)
		}
	default:
		bad("unsupported key")
	}
}

// inlineTable checks the keys of { k = v, … } at p, of struct type t.
func (c *docChecker) inlineTable(v *unstable.Node, p path, t reflect.Type) {
	for it := v.Children(); it.Next(); {
		kv := it.Node()
		if kv.Kind == unstable.KeyValue {
			c.keyValue(kv, p, t)
		}
	}
}

// field returns the field of struct t whose toml tag is name.
func field(t reflect.Type, name string) (reflect.StructField, bool) {
	for _, f := range tomlFields(t) {
		if tomlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func tomlFields(t reflect.Type) []reflect.StructField {
	var out []reflect.StructField
	if t.Kind() != reflect.Struct {
		return nil
	}
	for i := range t.NumField() {
		f := t.Field(i)
		if f.IsExported() && tomlName(f) != "-" {
			out = append(out, f)
		}
	}
	return out
}

func tomlName(f reflect.StructField) string {
	name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
	if name == "" {
		return f.Name
	}
	return name
}

func deref(t reflect.Type) reflect.Type {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t
}

// isTable reports whether t is written as a TOML table.
func isTable(t reflect.Type) bool {
	return t.Kind() == reflect.Struct && !reflect.PointerTo(t).Implements(reflect.TypeFor[encoding.TextUnmarshaler]())
}

// want says what a value of Go type t is written as.
func want(t reflect.Type) string {
	t = deref(t)
	switch t {
	case reflect.TypeFor[Duration]():
		return `a duration string such as "30s", "5m" or "6h"`
	case reflect.TypeFor[Percent]():
		return `a percentage string such as "10%"`
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int64:
		return "a whole number"
	case reflect.Float64:
		return "a number"
	case reflect.Struct:
		return "a table"
	case reflect.Slice:
		return "an array of tables"
	}
	return t.String()
}

// kindName names a TOML value kind: "1.5 is a float".
func kindName(k unstable.Kind) string {
	switch k {
	case unstable.String:
		return "a string"
	case unstable.Bool:
		return "a boolean"
	case unstable.Float:
		return "a float"
	case unstable.Integer:
		return "an integer"
	case unstable.Array:
		return "an array"
	case unstable.InlineTable:
		return "a table"
	case unstable.LocalDate, unstable.LocalTime, unstable.LocalDateTime, unstable.DateTime:
		return "a date/time"
	}
	return strings.ToLower(k.String())
}

// parseTOMLFloat parses a TOML integer or float literal.
func parseTOMLFloat(s string) (float64, error) {
	return strconv.ParseFloat(strings.ReplaceAll(s, "_", ""), 64)
}

// suggest is what to tell about an unknown key name in table t (at the
// dotted key parent, "" for the top): the closest known key, or the list of
// known keys.
func suggest(name string, t reflect.Type, parent path) string {
	var known []string
	for _, f := range tomlFields(t) {
		known = append(known, tomlName(f))
	}
	if len(known) == 0 {
		return ""
	}
	best, bestD := "", 3
	for _, k := range known {
		if d := editDistance(name, k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	sort.Strings(known)
	where := "top-level"
	switch {
	case len(parent) == 1 && parent[0].index >= 0:
		where = "[[" + parent.dotted() + "]]"
	case len(parent) > 0:
		where = "[" + parent.dotted() + "]"
	}
	return fmt.Sprintf(" (%s keys are %s)", where, strings.Join(known, ", "))
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// targetNames returns the names of the [[target]] tables of data by index,
// "" when absent, for a document that parses but does not decode.
func targetNames(data []byte) []string {
	var names []string
	p := &unstable.Parser{}
	p.Reset(data)
	in := false // in a [[target]] table
	for p.NextExpression() {
		e := p.Expression()
		var keys []string
		for it := e.Key(); it.Next(); {
			keys = append(keys, string(it.Node().Data))
		}
		switch e.Kind {
		case unstable.ArrayTable:
			in = len(keys) == 1 && keys[0] == "target"
			if in {
				names = append(names, "")
			}
		case unstable.Table:
			in = false
		case unstable.KeyValue:
			if in && len(keys) == 1 && keys[0] == "name" && e.Value().Kind == unstable.String {
				names[len(names)-1] = string(e.Value().Data)
			}
		}
	}
	return names
}

// unnamedTarget names the target of index i for a message when it has no
// name: "the 1st [[target]]".
func unnamedTarget(i int) string {
	return "the " + ordinal(i+1) + " [[target]]"
}

// ordinal is n as "1st", "2nd", "3rd", "4th", "11th", "21st"…
func ordinal(n int) string {
	suffix := "th"
	switch {
	case n%100 >= 11 && n%100 <= 13:
	case n%10 == 1:
		suffix = "st"
	case n%10 == 2:
		suffix = "nd"
	case n%10 == 3:
		suffix = "rd"
	}
	return strconv.Itoa(n) + suffix
}

// maxShown bounds the length of a value quoted in a message.
const maxShown = 60

// shownValue is the value v as the file writes it, for a message: a
// string quoted, an array or inline table written out (shortened past
// maxShown characters).
func shownValue(v *unstable.Node) string {
	var b strings.Builder
	writeValue(&b, v)
	s := b.String()
	if len(s) > maxShown {
		cut := maxShown
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut] + "…"
	}
	return s
}

func writeValue(b *strings.Builder, v *unstable.Node) {
	switch v.Kind {
	case unstable.String:
		b.WriteString(strconv.Quote(string(v.Data)))
	case unstable.Array:
		b.WriteByte('[')
		n := 0
		for it := v.Children(); it.Next(); {
			el := it.Node()
			if el.Kind == unstable.Comment {
				continue
			}
			if n > 0 {
				b.WriteString(", ")
			}
			n++
			writeValue(b, el)
			if b.Len() > maxShown {
				break
			}
		}
		b.WriteByte(']')
	case unstable.InlineTable:
		b.WriteString("{ ")
		n := 0
		for it := v.Children(); it.Next(); {
			kv := it.Node()
			if kv.Kind != unstable.KeyValue {
				continue
			}
			if n > 0 {
				b.WriteString(", ")
			}
			n++
			var keys []string
			for k := kv.Key(); k.Next(); {
				keys = append(keys, string(k.Node().Data))
			}
			b.WriteString(strings.Join(keys, ".") + " = ")
			writeValue(b, kv.Value())
			if b.Len() > maxShown {
				break
			}
		}
		b.WriteString(" }")
	default:
		b.Write(v.Data)
	}
}

// numberRange says that the number v is out of the range of the numbers
// the config can hold (a 64-bit integer, a float up to about 1.8e308), or
// returns "". go-toml refuses such a value with a message of strconv's.
func numberRange(v *unstable.Node) string {
	s := strings.ReplaceAll(string(v.Data), "_", "")
	var err error
	if v.Kind == unstable.Integer {
		_, err = strconv.ParseInt(s, 0, 64)
		if errors.Is(err, strconv.ErrRange) {
			return fmt.Sprintf("%s is out of range (a whole number goes from -9223372036854775808 to 9223372036854775807)", v.Data)
		}
		return ""
	}
	_, err = strconv.ParseFloat(s, 64)
	if errors.Is(err, strconv.ErrRange) {
		return fmt.Sprintf("%s is out of range (a number goes from about -1.8e308 to 1.8e308)", v.Data)
	}
	return ""
}
