package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestReadmeDevelopmentListsTheCIChecks: the README's "Development"
// section names every check .ci/run makes, so that a contributor can run
// them before pushing.
func TestReadmeDevelopmentListsTheCIChecks(t *testing.T) {
	root := repoRoot(t)
	ci, err := os.ReadFile(filepath.Join(root, ".ci", "run"))
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, dev, ok := strings.Cut(string(readme), "\n## Development\n")
	if !ok {
		t.Fatal(`README.md has no "## Development" section`)
	}
	if end := strings.Index(dev, "\n## "); end >= 0 {
		dev = dev[:end]
	}
	dev = strings.Join(strings.Fields(dev), " ")
	checks := 0
	for _, check := range []string{"go mod tidy -diff", "go vet", "gofmt", "staticcheck", "go test -race", "-fuzz="} {
		if !strings.Contains(string(ci), check) {
			continue
		}
		checks++
		name := map[string]string{"go test -race": "the test command above", "-fuzz=": "each fuzz target"}[check]
		if name == "" {
			name = check
		}
		if !strings.Contains(dev, name) {
			t.Errorf(".ci/run runs %q; README's Development section does not say so (want %q)", check, name)
		}
	}
	if checks < 4 {
		t.Errorf(".ci/run has only %d of the checks this test knows: has it moved?", checks)
	}
}
