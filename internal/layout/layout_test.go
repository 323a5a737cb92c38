// Package layout_test checks that the module's packages keep the layout
// the README describes: data flows one way, triggers → policy → executor →
// backends, and a package never imports one further up the pipeline; the
// storage kinds (jsonfile, rotating, redis, memory) never import each
// other; every package says what it is for in a doc comment.
package layout_test

import (
	"bytes"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/papyra/watcher/"

// rank orders the packages: a package may import only packages of a lower
// rank (non-test files; tests may reach across, as the long-line memory
// test does to measure both file kinds with one harness). Packages of one
// rank, like the storage kinds, cannot import each other.
var rank = map[string]int{
	"internal/urlcheck":             0,
	"backends":                      1,
	"backends/fsx":                  2,
	"backends/ndjson":               3,
	"snapshot":                      3,
	"backends/jsonfile":             4,
	"backends/rotating":             4,
	"backends/redis":                4,
	"backends/memory":               4,
	"backends/internal/backendtest": 4,
	"executor":                      5,
	"policy":                        6,
	"triggers":                      7,
	"cmd/watcher":                   8,
}

// unranked are packages outside the pipeline: test helpers and tools,
// which may import anything, and nothing in the pipeline imports them.
var unranked = []string{"internal/testlog", "internal/testutil", "tools/", "integration", "deploy", "internal/layout"}

func isUnranked(pkg string) bool {
	for _, u := range unranked {
		if pkg == u || (strings.HasSuffix(u, "/") && strings.HasPrefix(pkg, u)) {
			return true
		}
	}
	return false
}

func TestLayoutImportsFlowDown(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "data") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") {
			return nil
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		pkg := filepath.ToSlash(rel)
		seen[pkg] = true
		if strings.HasSuffix(path, "_test.go") || isUnranked(pkg) {
			return nil
		}
		r, ok := rank[pkg]
		if !ok {
			t.Errorf("package %s has no place in the layout: add it to rank (or unranked) in %s", pkg, "internal/layout/layout_test.go")
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			dep, ok := strings.CutPrefix(p, module)
			if !ok {
				continue
			}
			if isUnranked(dep) {
				t.Errorf("%s imports %s, a test helper or tool", rel+"/"+filepath.Base(path), dep)
				continue
			}
			if dr, ok := rank[dep]; ok && dr >= r {
				t.Errorf("%s imports %s: %s is not below %s in the pipeline (triggers → policy → executor → backends; storage kinds never import each other)",
					rel+"/"+filepath.Base(path), dep, dep, pkg)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for pkg := range rank {
		if !seen[pkg] {
			t.Errorf("rank names %s, which does not exist any more", pkg)
		}
	}
}

// TestLayoutPackagesSayWhatTheyAreFor: every package of the pipeline has a
// doc comment starting "Package <name>".
func TestLayoutPackagesSayWhatTheyAreFor(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for pkg := range rank {
		files, err := filepath.Glob(filepath.Join(root, pkg, "*.go"))
		if err != nil {
			t.Fatal(err)
		}
		documented := false
		for _, file := range files {
			if strings.HasSuffix(file, "_test.go") {
				continue
			}
			f, err := parser.ParseFile(token.NewFileSet(), file, nil, parser.PackageClauseOnly|parser.ParseComments)
			if err != nil {
				t.Fatal(err)
			}
			if f.Doc != nil && strings.HasPrefix(f.Doc.Text(), "Package "+f.Name.Name+" ") {
				documented = true
			}
		}
		if !documented && pkg != "cmd/watcher" {
			t.Errorf("package %s has no doc comment starting \"Package <name> \"", pkg)
		}
	}
}

// goldenCopies are the copies of Papyra's golden cases (each package's
// tests read their own testdata) and the copy the others must equal.
var goldenCopies = map[string]string{
	"backends/jsonfile/testdata/json":     "integration/testdata/papyra/json",
	"backends/rotating/testdata/rotating": "integration/testdata/papyra/rotating",
}

// TestLayoutGoldenCasesInSync: the golden cases copied into the backends'
// testdata are the integration tests' cases, file for file and byte for
// byte, so that a case updated in one place cannot silently diverge.
func TestLayoutGoldenCasesInSync(t *testing.T) {
	root, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatal(err)
	}
	for cp, ref := range goldenCopies {
		files := func(dir string) map[string][]byte {
			m := map[string][]byte{}
			err := filepath.WalkDir(filepath.Join(root, dir), func(p string, d fs.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				b, err := os.ReadFile(p)
				if err != nil {
					return err
				}
				rel, _ := filepath.Rel(filepath.Join(root, dir), p)
				m[rel] = b
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
		a, b := files(cp), files(ref)
		if len(b) == 0 {
			t.Fatalf("%s holds no golden case", ref)
		}
		for name, data := range b {
			if got, ok := a[name]; !ok {
				t.Errorf("%s/%s is missing (it is in %s)", cp, name, ref)
			} else if !bytes.Equal(got, data) {
				t.Errorf("%s/%s differs from %s/%s", cp, name, ref, name)
			}
		}
		for name := range a {
			if _, ok := b[name]; !ok {
				t.Errorf("%s/%s is not in %s", cp, name, ref)
			}
		}
	}
}
