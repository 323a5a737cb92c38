package deploy

import (
	"bufio"
	"debug/elf"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

const containerfile = "container/Containerfile"

// instruction is one line of a Containerfile (continuations joined).
type instruction struct {
	line int
	op   string // upper case: FROM, RUN, ...
	args string
}

// stage is a build stage: its FROM and the instructions after it.
type stage struct {
	base, name string
	ins        []instruction
}

// parseContainerfile reads the recipe: global ARGs and its stages.
func parseContainerfile(t *testing.T) (globalArgs map[string]string, stages []stage) {
	t.Helper()
	f, err := os.Open(containerfile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	globalArgs = map[string]string{}
	sc := bufio.NewScanner(f)
	var cur strings.Builder
	start := 0
	for n := 1; sc.Scan(); n++ {
		l := sc.Text()
		trimmed := strings.TrimSpace(l)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = n
		}
		if strings.HasSuffix(l, "\\") {
			cur.WriteString(strings.TrimSuffix(l, "\\") + " ")
			continue
		}
		cur.WriteString(l)
		op, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		cur.Reset()
		in := instruction{start, strings.ToUpper(op), strings.TrimSpace(args)}
		switch {
		case in.op == "FROM":
			fields := strings.Fields(in.args)
			st := stage{base: fields[0]}
			if len(fields) == 3 && strings.EqualFold(fields[1], "AS") {
				st.name = fields[2]
			}
			stages = append(stages, st)
		case len(stages) == 0 && in.op == "ARG":
			k, v, _ := strings.Cut(in.args, "=")
			globalArgs[k] = v
		case len(stages) == 0:
			t.Fatalf("%s:%d: %s before the first FROM", containerfile, in.line, in.op)
		default:
			stages[len(stages)-1].ins = append(stages[len(stages)-1].ins, in)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(stages) < 2 {
		t.Fatalf("%s: %d stages, want a build stage and a final one", containerfile, len(stages))
	}
	return globalArgs, stages
}

func (s stage) all(op string) []instruction {
	var out []instruction
	for _, in := range s.ins {
		if in.op == op {
			out = append(out, in)
		}
	}
	return out
}

// one returns the last instruction op of the stage (the effective one).
func (s stage) one(t *testing.T, op string) instruction {
	t.Helper()
	all := s.all(op)
	if len(all) == 0 {
		t.Fatalf("%s: the final stage has no %s", containerfile, op)
	}
	return all[len(all)-1]
}

// execForm decodes a JSON-array instruction argument.
func execForm(t *testing.T, in instruction) []string {
	t.Helper()
	var v []string
	if err := json.Unmarshal([]byte(in.args), &v); err != nil || len(v) == 0 {
		t.Fatalf("%s:%d: %s %s is not in exec form (a JSON array): the image has no shell", containerfile, in.line, in.op, in.args)
	}
	return v
}

// buildRun is the RUN of the build stage that runs go build.
func buildRun(t *testing.T, build stage) instruction {
	t.Helper()
	for _, in := range build.all("RUN") {
		if strings.Contains(in.args, "go build") {
			return in
		}
	}
	t.Fatalf("%s: the build stage has no RUN … go build", containerfile)
	return instruction{}
}

// The recipe: a static build in one stage, a shell-less non-root final stage.
func TestContainerRecipe(t *testing.T) {
	globalArgs, stages := parseContainerfile(t)
	build, final := stages[0], stages[len(stages)-1]

	// The build stage's Go is the go.mod's.
	gomod, err := os.ReadFile("../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	if m == nil {
		t.Fatal("go.mod has no go directive")
	}
	if !strings.HasPrefix(build.base, "docker.io/library/golang:${GO_VERSION}") || globalArgs["GO_VERSION"] != string(m[1]) {
		t.Errorf("build stage FROM %s with GO_VERSION=%s, want golang:${GO_VERSION} with go.mod's %s", build.base, globalArgs["GO_VERSION"], m[1])
	}
	run := buildRun(t, build)
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "-o /out/watcher", "./cmd/watcher"} {
		if !strings.Contains(run.args, want) {
			t.Errorf("%s:%d: the go build lacks %s", containerfile, run.line, want)
		}
	}

	// Every -X main.NAME is a string variable of cmd/watcher (the linker
	// ignores a name that does not exist).
	vars := packageVars(t, "../cmd/watcher")
	stamps := regexp.MustCompile(`-X main\.([A-Za-z_][A-Za-z0-9_]*)=`).FindAllStringSubmatch(run.args, -1)
	if len(stamps) == 0 {
		t.Errorf("%s:%d: no -X main.version=… stamp", containerfile, run.line)
	}
	for _, s := range stamps {
		if !vars[s[1]] {
			t.Errorf("%s:%d: -X main.%s: cmd/watcher has no package variable %s", containerfile, run.line, s[1], s[1])
		}
	}

	// The sources copied into the build stage hold every package of this
	// module the binary is built from.
	var copied []string
	for _, in := range build.all("COPY") {
		if strings.HasPrefix(in.args, "--") {
			continue
		}
		f := strings.Fields(in.args)
		copied = append(copied, f[:len(f)-1]...)
	}
	out, err := exec.Command("go", "list", "-deps", "-f", `{{if .Module}}{{if .Module.Main}}{{.Dir}}{{end}}{{end}}`,
		"github.com/papyra/watcher/cmd/watcher").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, _ := filepath.Abs("..")
	for _, dir := range strings.Fields(string(out)) {
		rel, _ := filepath.Rel(root, dir)
		top := strings.Split(filepath.ToSlash(rel), "/")[0] + "/"
		if !slices.Contains(copied, top) {
			t.Errorf("%s: the build stage does not COPY %s (package %s)", containerfile, top, rel)
		}
	}
	for _, f := range []string{"go.mod", "go.sum"} {
		if !slices.Contains(copied, f) {
			t.Errorf("%s: the build stage does not COPY %s", containerfile, f)
		}
	}

	// The final stage: static base, no shell used, non-root numeric user.
	if final.base != "scratch" && !strings.HasPrefix(final.base, "gcr.io/distroless/static") {
		t.Errorf("final stage FROM %s: want scratch or gcr.io/distroless/static", final.base)
	}
	if runs := final.all("RUN"); len(runs) > 0 {
		t.Errorf("%s:%d: RUN in the final stage: the image has no shell", containerfile, runs[0].line)
	}
	user := final.one(t, "USER")
	uid, gid, _ := strings.Cut(user.args, ":")
	if n, err := strconv.Atoi(uid); err != nil || n == 0 {
		t.Errorf("%s:%d: USER %s: want a numeric non-zero UID (runAsNonRoot can only check a number)", containerfile, user.line, user.args)
	}
	if gid != "" {
		if _, err := strconv.Atoi(gid); err != nil {
			t.Errorf("%s:%d: USER %s: want a numeric GID", containerfile, user.line, user.args)
		}
	}
	entry := execForm(t, final.one(t, "ENTRYPOINT"))
	binCopied := slices.ContainsFunc(final.all("COPY"), func(in instruction) bool {
		f := strings.Fields(in.args)
		return slices.Contains(f, "--from="+build.name) && slices.Contains(f, "/out/watcher") && f[len(f)-1] == entry[0]
	})
	if !binCopied || len(entry) != 1 {
		t.Errorf("ENTRYPOINT %q: want exactly the binary COPY --from=%s /out/watcher puts there", entry, build.name)
	}
	cmd := execForm(t, final.one(t, "CMD"))
	if vals := checkWatcherArgs(t, "CMD", cmd); cmd[0] != "run" || vals["config"] != containerConfigPath {
		t.Errorf("CMD %q: want run --config %s", cmd, containerConfigPath)
	}
	// Read-only root: the working directory (where a relative state_dir
	// goes) is the declared volume, owned by the user.
	workdir := final.one(t, "WORKDIR").args
	vols := execForm(t, final.one(t, "VOLUME"))
	if !slices.Contains(vols, workdir) || workdir != containerStateDir {
		t.Errorf("WORKDIR %s, VOLUME %q: want the state volume %s as both", workdir, vols, containerStateDir)
	}
	owned := slices.ContainsFunc(final.all("COPY"), func(in instruction) bool {
		f := strings.Fields(in.args)
		return slices.Contains(f, "--chown="+user.args) && f[len(f)-1] == containerStateDir
	})
	if !owned {
		t.Errorf("%s is not created owned by %s (COPY --chown=%s … %s)", containerStateDir, user.args, user.args, containerStateDir)
	}
	if e := final.all("EXPOSE"); len(e) == 0 || e[len(e)-1].args != "9464" {
		t.Errorf("EXPOSE: want 9464")
	}
}

const (
	containerConfigPath = "/etc/watcher/config.toml"
	containerStateDir   = "/var/lib/watcher"
	containerUID        = 65532
)

// packageVars returns the names of the package-level variables of the Go
// package in dir.
func packageVars(t *testing.T, dir string) map[string]bool {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]bool{}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, s := range g.Specs {
				for _, n := range s.(*ast.ValueSpec).Names {
					vars[n.Name] = true
				}
			}
		}
	}
	return vars
}

// containerBinary builds the watcher as the recipe's RUN line does: the
// same shell command, with its ARGs in the environment, in a copy of the
// sources the recipe copies (here: the repository), written where the
// test says instead of /out/watcher.
func containerBinary(t *testing.T, version, revision string) string {
	t.Helper()
	_, stages := parseContainerfile(t)
	run := buildRun(t, stages[0])
	bin := filepath.Join(t.TempDir(), "watcher")
	script := strings.ReplaceAll(run.args, "/out/watcher", bin)
	cmd := exec.Command("sh", "-c", script)
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "VERSION="+version, "REVISION="+revision)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s:%d: %s: %v\n%s", containerfile, run.line, script, err, out)
	}
	return bin
}

// The binary the recipe builds is static and runs, as the image's user, in
// a root holding nothing but what the image holds: itself, its config and
// the volumes (state and Papyra's data). Only the volumes are writable to
// it, as with a read-only root filesystem.
func TestContainerBinaryInEmptyRoot(t *testing.T) {
	bin := containerBinary(t, "v0.0.0-containertest", "0123456789abcdef")

	// Static: no interpreter, no shared libraries.
	ef, err := elf.Open(bin)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("the binary has a %s program header: not static (CGO_ENABLED=0?)", p.Type)
		}
	}
	if libs, _ := ef.ImportedLibraries(); len(libs) > 0 {
		t.Errorf("the binary needs shared libraries %q", libs)
	}
	ef.Close()

	if os.Geteuid() != 0 {
		msg := "running the binary in an empty root needs chroot: run the tests as root (CI does)"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	// The root: owned by root, so read-only to the image's user, but for
	// the volumes.
	root := t.TempDir()
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	mk := func(path string, mode os.FileMode, owner int, data []byte) {
		t.Helper()
		p := filepath.Join(root, path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if data == nil {
			err = os.Mkdir(p, mode)
		} else {
			err = os.WriteFile(p, data, mode)
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, owner, owner); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	binData, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	mk("usr/local/bin/watcher", 0o755, 0, binData)
	// The config: the shipped one-shot config (CronJob), as mounted.
	cfg := cronJobConfig(t)
	mk(strings.TrimPrefix(containerConfigPath, "/"), 0o644, 0, []byte(cfg))
	mk(strings.TrimPrefix(containerStateDir, "/"), 0o755, containerUID, nil)
	mk("var/lib/papyra", 0o755, containerUID, nil)
	data := `{"kind":"event","system_id":"local","actor_address":"a","event_type":"x","payload":{},"timestamp":4102444800.0}
not json: dropped by any compaction
{"kind":"event","system_id":"local","actor_address":"a","event_type":"y","payload":{},"timestamp":4102444801.0}
`
	mk("var/lib/papyra/events.ndjson", 0o644, containerUID, []byte(data))

	inRoot := func(args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command("/usr/local/bin/watcher", args...)
		cmd.Dir = containerStateDir // WORKDIR
		cmd.Env = []string{"PATH=/usr/local/bin"}
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: root,
			Credential: &syscall.Credential{Uid: containerUID, Gid: containerUID, NoSetGroups: true}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := inRoot("version")
	if err != nil || !strings.Contains(out, "v0.0.0-containertest") {
		t.Errorf("watcher version in the empty root: %v\n%s", err, out)
	}
	if vars := packageVars(t, "../cmd/watcher"); vars["revision"] && !strings.Contains(out, "0123456789abcdef") {
		t.Errorf("watcher version does not show the REVISION stamped by the recipe:\n%s", out)
	}
	if out, err := inRoot("validate", "--config", containerConfigPath); err != nil || strings.Contains(out, "warning:") {
		t.Errorf("watcher validate in the empty root: %v\n%s", err, out)
	}
	// A real compaction: temp file and rename in the data volume, journal
	// and lock in state_dir; nothing else may be written.
	out, err = inRoot("compact", "--config", containerConfigPath, "--json")
	if err != nil {
		t.Fatalf("watcher compact in the empty root: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(root, "var/lib/papyra/events.ndjson"))
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Replace(data, "not json: dropped by any compaction\n", "", 1); string(got) != want {
		t.Errorf("after compact the file holds:\n%s\nwant:\n%s\n(output: %s)", got, want, out)
	}
	if _, err := os.Stat(filepath.Join(root, "var/lib/papyra/.watcher/locks")); err != nil {
		t.Errorf("state_dir not used: %v", err)
	}
}
