package main

// The reference in docs/ must keep up with the code: every config key the
// decoder accepts is in docs/config.md, every metric the daemon exports is in
// docs/http-and-metrics.md (with its labels), and neither document names a
// key or a metric the code does not have.

import (
	"encoding"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/papyra/watcher/backends"
	"github.com/papyra/watcher/executor"
)

// repoRoot is the directory holding go.mod.
func repoRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test's directory")
		}
		dir = parent
	}
}

func readDoc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", name))
	if err != nil {
		t.Fatalf("the reference is missing: %v", err)
	}
	return string(b)
}

// configKeys walks the toml tags of typ and returns every leaf key, dotted
// ("watcher.state_dir", "target.retention.max_records"). Types that decode
// themselves from text (Duration, Percent) are leaves.
func configKeys(typ reflect.Type, prefix string) []string {
	textUnmarshaler := reflect.TypeFor[encoding.TextUnmarshaler]()
	var keys []string
	for i := range typ.NumField() {
		f := typ.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("toml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = f.Name
		}
		key := name
		if prefix != "" {
			key = prefix + "." + name
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer || ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && !reflect.PointerTo(ft).Implements(textUnmarshaler) &&
			ft != reflect.TypeFor[time.Time]() {
			keys = append(keys, configKeys(ft, key)...)
			continue
		}
		keys = append(keys, key)
	}
	return keys
}

var (
	// docTableHeading is a heading naming a config table: ## `[nats]`,
	// ### `[[target]]`, ## `[triggers.timer]`.
	docTableHeading = regexp.MustCompile("^#+ .*?`\\[\\[?([a-z_.*]+)\\]\\]?`")
	docBackticked   = regexp.MustCompile("`([^`]+)`")
)

// documentedKeys returns the dotted keys of config.md: under a heading that
// names a table, the backticked names in the first cell of each table row.
func documentedKeys(doc string) map[string]bool {
	keys := map[string]bool{}
	table := ""
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "#") {
			table = ""
			if m := docTableHeading.FindStringSubmatch(line); m != nil {
				table = m[1]
			}
			continue
		}
		if table == "" || !strings.HasPrefix(line, "|") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range docBackticked.FindAllStringSubmatch(cells[1], -1) {
			if regexp.MustCompile(`^[a-z_]+$`).MatchString(m[1]) {
				keys[table+"."+m[1]] = true
			}
		}
	}
	return keys
}

// overrideTables maps the per-target override tables to the global tables
// whose keys they take: a key of [target.policy] is documented with
// [policy], provided the document has a section on [target.policy].
var overrideTables = map[string]string{
	"target.policy.":   "policy.",
	"target.triggers.": "triggers.",
}

func TestDocsConfigReferenceCoversEveryKey(t *testing.T) {
	doc := readDoc(t, "config.md")
	documented := documentedKeys(doc)
	if len(documented) == 0 {
		t.Fatal("docs/config.md documents no key: expected headings such as ## `[watcher]` followed by tables whose first column is the key")
	}
	code := configKeys(reflect.TypeFor[Config](), "")
	inCode := map[string]bool{}
	for _, k := range code {
		inCode[k] = true
		if documented[k] {
			continue
		}
		found := false
		for over, global := range overrideTables {
			if rest, ok := strings.CutPrefix(k, over); ok && documented[global+rest] {
				found = true
				if heading := "`[" + strings.TrimSuffix(over, ".") + "]`"; !strings.Contains(doc, heading) &&
					!strings.Contains(doc, "`["+over) {
					t.Errorf("config key %s: docs/config.md has no section on %s", k, heading)
				}
			}
		}
		if !found {
			t.Errorf("config key %s is accepted by the config file but not documented in docs/config.md", k)
		}
	}
	var stale []string
	for k := range documented {
		if !inCode[k] {
			stale = append(stale, k)
		}
	}
	sort.Strings(stale)
	for _, k := range stale {
		t.Errorf("docs/config.md documents %s, which the config file does not accept", k)
	}
}

// TestDocsConfigTestCanFail makes sure the walk above sees keys at every
// depth: a reference without them would go unnoticed otherwise.
func TestDocsConfigTestCanFail(t *testing.T) {
	keys := configKeys(reflect.TypeFor[Config](), "")
	for _, want := range []string{"watcher.state_dir", "policy.debounce", "triggers.timer.interval",
		"nats.tls_ca", "target.name", "target.follow_symlinks", "target.retention.max_records",
		"target.policy.backoff_max", "target.triggers.disk.high_percent"} {
		if !slices.Contains(keys, want) {
			t.Errorf("the config walk misses %s (got %d keys)", want, len(keys))
		}
	}
	doc := "## `[watcher]`\n\n| key | type |\n| --- | --- |\n| `state_dir` | string |\n"
	got := documentedKeys(doc)
	if !got["watcher.state_dir"] || len(got) != 1 {
		t.Errorf("documentedKeys(%q) = %v, want only watcher.state_dir", doc, got)
	}
}

// metricNamesInSource finds the metric names the module's code registers:
// the Name of prometheus.*Opts literals (also through helper functions that
// take the name as a parameter), prometheus.BuildFQName and
// prometheus.NewDesc with a literal name. Test files are left out.
func metricNamesInSource(t *testing.T, root string) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			base := d.Name()
			if path != root && (strings.HasPrefix(base, ".") || strings.HasPrefix(base, "_") || base == "testdata" || base == "vendor") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return nil // a file being edited; the build reports it
		}
		for n := range metricNamesInFile(f) {
			names[n] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

func metricNamesInFile(f *ast.File) map[string]bool {
	names := map[string]bool{}
	str := func(e ast.Expr) (string, bool) {
		if lit, ok := e.(*ast.BasicLit); ok && lit.Kind == token.STRING {
			s, err := strconv.Unquote(lit.Value)
			return s, err == nil
		}
		return "", false
	}
	isProm := func(e ast.Expr, sel ...string) bool {
		s, ok := e.(*ast.SelectorExpr)
		if !ok {
			return false
		}
		x, ok := s.X.(*ast.Ident)
		return ok && x.Name == "prometheus" && slices.Contains(sel, s.Sel.Name)
	}
	// helpers: function name → index of the parameter used as a metric name.
	helpers := map[string]int{}
	paramIndex := func(ft *ast.FuncType, name string) int {
		i := 0
		for _, field := range ft.Params.List {
			if len(field.Names) == 0 {
				i++
				continue
			}
			for _, n := range field.Names {
				if n.Name == name {
					return i
				}
				i++
			}
		}
		return -1
	}
	// optsName finds Name fields of prometheus.*Opts literals in body; a
	// literal is recorded, a parameter of ft makes the function a helper.
	optsName := func(body ast.Node, ft *ast.FuncType, helper string) {
		ast.Inspect(body, func(n ast.Node) bool {
			cl, ok := n.(*ast.CompositeLit)
			if !ok || !isProm(cl.Type, "CounterOpts", "GaugeOpts", "HistogramOpts", "SummaryOpts", "Opts") {
				return true
			}
			for _, el := range cl.Elts {
				kv, ok := el.(*ast.KeyValueExpr)
				if !ok {
					continue
				}
				if k, ok := kv.Key.(*ast.Ident); !ok || k.Name != "Name" {
					continue
				}
				if s, ok := str(kv.Value); ok {
					names[s] = true
				} else if id, ok := kv.Value.(*ast.Ident); ok && ft != nil && helper != "" {
					if i := paramIndex(ft, id.Name); i >= 0 {
						helpers[helper] = i
					}
				}
			}
			return true
		})
	}
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.FuncDecl:
			if n.Body != nil {
				optsName(n.Body, n.Type, n.Name.Name)
			}
		case *ast.AssignStmt:
			for i, rhs := range n.Rhs {
				if fl, ok := rhs.(*ast.FuncLit); ok && i < len(n.Lhs) {
					if id, ok := n.Lhs[i].(*ast.Ident); ok {
						optsName(fl.Body, fl.Type, id.Name)
					}
				}
			}
		case *ast.CallExpr:
			switch {
			case isProm(n.Fun, "BuildFQName") && len(n.Args) == 3:
				if s, ok := str(n.Args[2]); ok {
					names[s] = true
				}
			case isProm(n.Fun, "NewDesc") && len(n.Args) > 0:
				if s, ok := str(n.Args[0]); ok {
					names[strings.TrimPrefix(s, executor.MetricsNamespace+"_")] = true
				}
			}
		}
		return true
	})
	// Calls of the helpers with a literal name.
	ast.Inspect(f, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		var fn string
		switch fun := call.Fun.(type) {
		case *ast.Ident:
			fn = fun.Name
		case *ast.SelectorExpr:
			fn = fun.Sel.Name
		}
		if i, ok := helpers[fn]; ok && i < len(call.Args) {
			if s, ok := str(call.Args[i]); ok {
				names[s] = true
			}
		}
		return true
	})
	return names
}

// gatheredMetrics builds the metrics as the daemon does, gives every series a
// value, and returns each papyra_compactor_ family with its label names.
func gatheredMetrics(t *testing.T) map[string][]string {
	t.Helper()
	m := executor.NewMetrics("node-1")
	m.InitTarget("events", "json")
	m.InitTarget("streams", "redis")
	m.Triggered("growth")
	m.Coalesced("events")
	m.RateLimited()
	m.SetStuck("events", true)
	m.SetTargetBytes("events", 1000)
	m.SetWarning("events", "no_retention", true)
	m.SetWarning("", "global", true)
	m.SetNATSConnected(true)
	m.SetLastSuccess("events", time.Now())
	m.SetDiskRatios(func() map[string]float64 { return map[string]float64{"/": 0.5} })
	m.SetRedisRatios(func() map[string]float64 { return map[string]float64{"streams": 0.5} })
	before, after := int64(1000), int64(100)
	r := backends.Report{Target: "events", Backend: "json", Trigger: "growth", BeforeRecords: 10,
		AfterRecords: 1, BeforeBytes: &before, AfterBytes: &after, StartedAt: time.Now(), DurationMS: 12}
	r.Finish()
	m.ObserveReport(r)
	r.Error = "boom"
	m.ObserveReport(r)

	fams, err := m.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]string{}
	for _, f := range fams {
		if !strings.HasPrefix(f.GetName(), executor.MetricsNamespace+"_") {
			continue
		}
		labels := map[string]bool{}
		for _, s := range f.GetMetric() {
			for _, l := range s.GetLabel() {
				labels[l.GetName()] = true
			}
		}
		out[f.GetName()] = slices.Sorted(func(yield func(string) bool) {
			for l := range labels {
				if !yield(l) {
					return
				}
			}
		})
	}
	return out
}

var docMetricName = regexp.MustCompile(executor.MetricsNamespace + `_[a-z0-9_]+`)

func TestDocsMetricsReferenceCoversEveryMetric(t *testing.T) {
	doc := readDoc(t, "http-and-metrics.md")
	prefix := executor.MetricsNamespace + "_"
	known := map[string]bool{}
	for n := range metricNamesInSource(t, repoRoot(t)) {
		known[prefix+n] = true
	}
	gathered := gatheredMetrics(t)
	for n := range gathered {
		known[n] = true
	}
	if len(known) < 10 {
		t.Fatalf("found only %d metrics in the code (%v): the search is broken", len(known), known)
	}
	rows := map[string]string{} // metric → its table row in the doc
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(line, "|") {
			continue
		}
		cells := strings.Split(line, "|")
		if len(cells) < 3 {
			continue
		}
		for _, m := range docBackticked.FindAllStringSubmatch(cells[1], -1) {
			name, _, _ := strings.Cut(m[1], "{")
			if strings.HasPrefix(name, prefix) {
				rows[name] = line
			}
		}
	}
	names := slices.Sorted(func(yield func(string) bool) {
		for n := range known {
			if !yield(n) {
				return
			}
		}
	})
	for _, n := range names {
		row, ok := rows[n]
		if !ok {
			t.Errorf("metric %s is exported but has no row in docs/http-and-metrics.md", n)
			continue
		}
		for _, l := range gathered[n] {
			if !strings.Contains(row, "`"+l+"`") {
				t.Errorf("metric %s has the label %q, which its row in docs/http-and-metrics.md does not name", n, l)
			}
		}
	}
	// Nothing documented that the code does not export.
	seen := map[string]bool{}
	for _, n := range docMetricName.FindAllString(doc, -1) {
		base := n
		for _, suf := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, suf); ok && known[b] {
				base = b
			}
		}
		if !known[base] && !seen[n] {
			seen[n] = true
			t.Errorf("docs/http-and-metrics.md names %s, which the watcher does not export", n)
		}
	}
}

// TestDocsMetricsSearchFindsHelpers checks the source search on a file that
// registers metrics the ways executor/metrics.go does.
func TestDocsMetricsSearchFindsHelpers(t *testing.T) {
	src := `package p
func f() {
	counterVec := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ns", Name: name, Help: help}, labels)
	}
	counterVec("a_total", "help")
	prometheus.NewGauge(prometheus.GaugeOpts{Name: "b"})
	newCollector(prometheus.BuildFQName("ns", "", "c"), "help")
}
func gaugeVec(help, name string) {
	prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name}, nil)
}
func g() { gaugeVec("help", "d") }
`
	f, err := parser.ParseFile(token.NewFileSet(), "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := metricNamesInFile(f)
	for _, want := range []string{"a_total", "b", "c", "d"} {
		if !got[want] {
			t.Errorf("metric %q not found; got %v", want, got)
		}
	}
	if got["help"] {
		t.Errorf("a help text was taken for a name: %v", got)
	}
}
