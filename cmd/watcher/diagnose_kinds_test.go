package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// warningKinds returns the warning kinds diagnose.go declares: the string
// constants named warn…, by value.
func warningKinds(t *testing.T) map[string]string {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), "diagnose.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for _, d := range f.Decls {
		g, ok := d.(*ast.GenDecl)
		if !ok || g.Tok != token.CONST {
			continue
		}
		for _, s := range g.Specs {
			vs := s.(*ast.ValueSpec)
			for i, n := range vs.Names {
				if !strings.HasPrefix(n.Name, "warn") || i >= len(vs.Values) {
					continue
				}
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					v, err := strconv.Unquote(lit.Value)
					if err != nil {
						t.Fatal(err)
					}
					kinds[v] = n.Name
				}
			}
		}
	}
	return kinds
}

// TestWarningKindsMatchAlertsAndDocs ties the self-diagnosis kinds to what
// names them outside the code: the kind="…" of papyra_compactor_warnings in
// the alert rules and their promtool tests, and the kind table of
// docs/http-and-metrics.md. Renaming a kind in the code (or in one of the
// files) fails here rather than silencing an alert.
func TestWarningKindsMatchAlertsAndDocs(t *testing.T) {
	kinds := warningKinds(t)
	var names []string
	for k := range kinds {
		names = append(names, k)
	}
	sort.Strings(names)
	order := slices.Clone(warnOrder)
	sort.Strings(order)
	if !slices.Equal(names, order) {
		t.Fatalf("warn… constants of diagnose.go %q are not the kinds of warnOrder %q", names, order)
	}

	root := repoRoot(t)
	selector := regexp.MustCompile(`papyra_compactor_warnings\{([^}]*)\}`)
	kindLabel := regexp.MustCompile(`kind\s*=\s*"([^"]*)"`)
	expLabel := regexp.MustCompile(`exp_labels:.*\bkind:\s*"?([A-Za-z0-9_]+)`)
	alerted := map[string]bool{}
	for _, name := range []string{"alerts.yml", "alerts_test.yml"} {
		b, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus", name))
		if err != nil {
			t.Fatal(err)
		}
		var used []string
		for _, m := range selector.FindAllStringSubmatch(string(b), -1) {
			for _, k := range kindLabel.FindAllStringSubmatch(m[1], -1) {
				used = append(used, k[1])
			}
		}
		for _, m := range expLabel.FindAllStringSubmatch(string(b), -1) {
			used = append(used, m[1])
		}
		for _, k := range used {
			if _, ok := kinds[k]; !ok {
				t.Errorf("deploy/prometheus/%s: kind %q is not a warning kind of diagnose.go (%s)", name, k, strings.Join(names, ", "))
			}
			if name == "alerts.yml" {
				alerted[k] = true
			}
		}
	}
	// The warning signs that have an alert of their own.
	for _, k := range []string{warnSlowStartup, warnReplaced, warnRedisPressure} {
		if !alerted[k] {
			t.Errorf("deploy/prometheus/alerts.yml has no alert on papyra_compactor_warnings{kind=%q} (%s)", k, kinds[k])
		}
	}

	// The kind table of the self-diagnosis section.
	doc := readDoc(t, "http-and-metrics.md")
	_, sec, ok := strings.Cut(doc, "\n## Self-diagnosis\n")
	if !ok {
		t.Fatal(`docs/http-and-metrics.md has no "## Self-diagnosis" section`)
	}
	if end := strings.Index(sec, "\n## "); end >= 0 {
		sec = sec[:end]
	}
	row := regexp.MustCompile("(?m)^\\| `([^`]+)` \\|")
	var documented []string
	for _, m := range row.FindAllStringSubmatch(sec, -1) {
		if m[1] == "kind" {
			continue // the header
		}
		documented = append(documented, m[1])
		if _, ok := kinds[m[1]]; !ok {
			t.Errorf("docs/http-and-metrics.md documents kind %q, which diagnose.go does not have", m[1])
		}
	}
	for _, k := range names {
		if !slices.Contains(documented, k) {
			t.Errorf("kind %q (%s) is not in the table of docs/http-and-metrics.md#self-diagnosis", k, kinds[k])
		}
	}
}
