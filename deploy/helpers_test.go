package deploy

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// needTool returns the path of the first of names found on PATH. When none
// is, the test skips, or fails under CI=true (.ci/run installs them).
func needTool(t *testing.T, why string, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	msg := fmt.Sprintf("none of %q found on PATH (needed to %s; .ci/run installs it)", names, why)
	if os.Getenv("CI") == "true" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// watcherFlag is a flag of a watcher subcommand, as its -h lists it.
type watcherFlag struct {
	takesValue bool
}

var flagLine = regexp.MustCompile(`^  -([a-z][a-z0-9-]*)(?: ([a-z]+))?$`)

// watcherFlags returns the flags `watcher <sub> -h` lists.
func watcherFlags(t *testing.T, sub string) map[string]watcherFlag {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(watcherBinary(t), sub, "-h")
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.Run() // the exit status of -h does not matter here
	flags := map[string]watcherFlag{}
	for _, l := range strings.Split(out.String(), "\n") {
		if m := flagLine.FindStringSubmatch(l); m != nil {
			flags[m[1]] = watcherFlag{takesValue: m[2] != ""}
		}
	}
	if len(flags) == 0 {
		t.Fatalf("watcher %s -h lists no flags:\n%s", sub, out.String())
	}
	return flags
}

// checkWatcherArgs checks a watcher command line (without the program):
// a known subcommand, then only flags it has, each with its value. It
// returns the flags' values.
func checkWatcherArgs(t *testing.T, what string, args []string) map[string]string {
	t.Helper()
	if len(args) == 0 {
		t.Fatalf("%s: no watcher arguments", what)
	}
	known := []string{"run", "compact", "validate", "status", "request", "version"}
	if !slices.Contains(known, args[0]) {
		t.Fatalf("%s: %q is not a watcher command", what, args[0])
	}
	flags := watcherFlags(t, args[0])
	values := map[string]string{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			t.Errorf("%s: argument %q is not a flag (watcher %s takes no positional arguments)", what, a, args[0])
			continue
		}
		f, ok := flags[name]
		if !ok {
			t.Errorf("%s: watcher %s has no flag %s", what, args[0], a)
			continue
		}
		if f.takesValue && !hasVal {
			if i+1 >= len(args) {
				t.Errorf("%s: %s needs a value", what, a)
				continue
			}
			i++
			val = args[i]
		}
		values[name] = val
	}
	return values
}

// cronFieldRange are the bounds of the five fields of a cron expression.
var cronFieldRange = [5][2]int{{0, 59}, {0, 23}, {1, 31}, {1, 12}, {0, 7}}

// checkCron checks a five-field cron expression (numbers, *, ranges, lists,
// steps) and returns its fields.
func checkCron(t *testing.T, what, expr string) []string {
	t.Helper()
	fields := strings.Fields(expr)
	if len(fields) != 5 {
		t.Fatalf("%s: cron %q has %d fields, want 5", what, expr, len(fields))
	}
	num := func(s string, i int) bool {
		n, err := strconv.Atoi(s)
		return err == nil && n >= cronFieldRange[i][0] && n <= cronFieldRange[i][1]
	}
	for i, f := range fields {
		for _, part := range strings.Split(f, ",") {
			base, step, hasStep := strings.Cut(part, "/")
			if hasStep {
				if n, err := strconv.Atoi(step); err != nil || n < 1 {
					t.Errorf("%s: cron %q: bad step in %q", what, expr, part)
				}
			}
			lo, hi, isRange := strings.Cut(base, "-")
			ok := base == "*" || (isRange && num(lo, i) && num(hi, i)) || (!isRange && num(base, i))
			if !ok {
				t.Errorf("%s: cron %q: field %d %q is not valid", what, expr, i+1, part)
			}
		}
	}
	return fields
}

// kustomize builds a kustomization with `kustomize build` or `kubectl
// kustomize` and returns its documents.
func kustomize(t *testing.T, dir string) []map[string]any {
	t.Helper()
	tool := needTool(t, "build the kustomizations", "kustomize", "kubectl")
	args := []string{"build", dir}
	if strings.HasSuffix(tool, "kubectl") {
		args = []string{"kustomize", dir}
	}
	out, err := exec.Command(tool, args...).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("%s %s: %v\n%s", tool, strings.Join(args, " "), err, stderr)
	}
	var docs []map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(out))
	for {
		var d map[string]any
		if err := dec.Decode(&d); err != nil {
			break
		}
		if d != nil {
			docs = append(docs, d)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s %s produced nothing", tool, strings.Join(args, " "))
	}
	return docs
}

// str digs a string out of nested maps.
func str(doc map[string]any, path ...string) string {
	var v any = doc
	for _, p := range path {
		m, ok := v.(map[string]any)
		if !ok {
			return ""
		}
		v = m[p]
	}
	s, _ := v.(string)
	return s
}
