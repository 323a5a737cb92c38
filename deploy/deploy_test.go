package deploy

// This test checks that the deployment files agree with each other and with
// the program.

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"
	"gopkg.in/yaml.v3"
)

// unit is a parsed systemd unit: section → key → values in order.
type unit map[string]map[string][]string

func parseUnit(t *testing.T, path string) unit {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" {
				t.Fatalf("%s:%d: not KEY=VALUE in a section: %q", path, n, line)
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return u
}

// last is the effective value of a single-valued directive.
func (u unit) last(section, key string) (string, bool) {
	vs, ok := u[section][key]
	if !ok || len(vs) == 0 {
		return "", false
	}
	return vs[len(vs)-1], true
}

// watcherConfig is the part of the watcher config these checks read.
type watcherConfig struct {
	Watcher struct {
		StateDir      string `toml:"state_dir"`
		HTTPListen    string `toml:"http_listen"`
		ShutdownGrace string `toml:"shutdown_grace"`
		Node          string `toml:"node"`
	} `toml:"watcher"`
	Triggers struct {
		Timer struct {
			Interval string `toml:"interval"`
		} `toml:"timer"`
	} `toml:"triggers"`
	Targets []struct {
		Name string `toml:"name"`
		Path string `toml:"path"`
	} `toml:"target"`
}

func parseConfig(t *testing.T, name string, data []byte) watcherConfig {
	t.Helper()
	var c watcherConfig
	if err := toml.Unmarshal(data, &c); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return c
}

func duration(t *testing.T, what, s string) time.Duration {
	t.Helper()
	d, err := time.ParseDuration(s)
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	return d
}

// under reports whether path is dir or inside it.
func under(path, dir string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

func TestSystemdUnit(t *testing.T) {
	u := parseUnit(t, "systemd/watcher.service")
	want := map[string]string{
		"Type":                     "simple",
		"ExecStart":                "/usr/local/bin/watcher run --config /etc/watcher/config.toml",
		"ExecReload":               "/bin/kill -HUP $MAINPID",
		"KillSignal":               "SIGTERM",
		"Restart":                  "on-failure",
		"User":                     "papyra",
		"Group":                    "papyra",
		"StateDirectory":           "watcher",
		"ProtectSystem":            "strict",
		"NoNewPrivileges":          "yes",
		"PrivateTmp":               "yes",
		"ProtectHome":              "yes",
		"ProtectKernelTunables":    "yes",
		"ProtectKernelModules":     "yes",
		"ProtectKernelLogs":        "yes",
		"ProtectControlGroups":     "yes",
		"RestrictAddressFamilies":  "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
		"CapabilityBoundingSet":    "",
		"RestartPreventExitStatus": "2",
	}
	for k, v := range want {
		got, ok := u.last("Service", k)
		if !ok {
			t.Errorf("[Service] lacks %s=", k)
		} else if got != v {
			t.Errorf("[Service] %s=%q, want %q", k, got, v)
		}
	}
	if v, _ := u.last("Service", "LimitNOFILE"); v == "" {
		t.Errorf("[Service] lacks LimitNOFILE=")
	}
	if v, _ := u.last("Install", "WantedBy"); v != "multi-user.target" {
		t.Errorf("[Install] WantedBy=%q", v)
	}
	rw := strings.Fields(strings.Join(u["Service"]["ReadWritePaths"], " "))

	// The shipped config fits the unit.
	data, err := os.ReadFile("systemd/config.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := parseConfig(t, "systemd/config.toml", data)
	if cfg.Watcher.StateDir != "/var/lib/watcher" || !slices.Contains(rw, cfg.Watcher.StateDir) {
		t.Errorf("state_dir %q is not the unit's StateDirectory (/var/lib/watcher) in ReadWritePaths %q",
			cfg.Watcher.StateDir, rw)
	}
	if len(cfg.Targets) == 0 {
		t.Fatal("systemd/config.toml has no targets")
	}
	for _, tg := range cfg.Targets {
		if !slices.ContainsFunc(rw, func(d string) bool { return under(tg.Path, d) }) {
			t.Errorf("target %s: %s is outside ReadWritePaths %q: ProtectSystem=strict makes it read-only",
				tg.Name, tg.Path, rw)
		}
	}
	stop := duration(t, "TimeoutStopSec", strings.TrimSpace(strings.Join(u["Service"]["TimeoutStopSec"], "")))
	if grace := duration(t, "shutdown_grace", cfg.Watcher.ShutdownGrace); stop <= grace+10*time.Second {
		t.Errorf("TimeoutStopSec=%s must be well above shutdown_grace %s, or systemd kills a compaction finishing in time", stop, grace)
	}
	if !strings.HasPrefix(cfg.Watcher.HTTPListen, "127.0.0.1:") {
		t.Errorf("http_listen %q: on a host, keep /status and /metrics on loopback", cfg.Watcher.HTTPListen)
	}
	if cfg.Triggers.Timer.Interval != "6h" {
		t.Errorf("timer interval %q: prometheus/alerts.yml assumes 6h (43200 = 2 × 6h)", cfg.Triggers.Timer.Interval)
	}
	validate(t, "systemd/config.toml", data)
}

// k8sDoc reads a Kubernetes manifest.
func k8sDoc(t *testing.T, path string, v any) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

type probe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port any    `yaml:"port"`
	} `yaml:"httpGet"`
}

type securityContext struct {
	AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
	ReadOnlyRootFilesystem   *bool `yaml:"readOnlyRootFilesystem"`
	RunAsNonRoot             *bool `yaml:"runAsNonRoot"`
	Capabilities             struct {
		Drop []string `yaml:"drop"`
	} `yaml:"capabilities"`
}

type envVar struct {
	Name      string `yaml:"name"`
	Value     string `yaml:"value"`
	ValueFrom *struct {
		FieldRef struct {
			FieldPath string `yaml:"fieldPath"`
		} `yaml:"fieldRef"`
	} `yaml:"valueFrom"`
}

type container struct {
	Name  string   `yaml:"name"`
	Image string   `yaml:"image"`
	Args  []string `yaml:"args"`
	Env   []envVar `yaml:"env"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	LivenessProbe   *probe          `yaml:"livenessProbe"`
	ReadinessProbe  *probe          `yaml:"readinessProbe"`
	SecurityContext securityContext `yaml:"securityContext"`
	Resources       struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		ReadOnly  bool   `yaml:"readOnly"`
	} `yaml:"volumeMounts"`
}

type volume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	HostPath *struct {
		Path string `yaml:"path"`
	} `yaml:"hostPath"`
}

type daemonSet struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Spec       struct {
		Template struct {
			Metadata struct {
				Annotations map[string]string `yaml:"annotations"`
			} `yaml:"metadata"`
			Spec struct {
				TerminationGracePeriodSeconds int `yaml:"terminationGracePeriodSeconds"`
				SecurityContext               struct {
					RunAsNonRoot *bool `yaml:"runAsNonRoot"`
					RunAsUser    int   `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				InitContainers []container `yaml:"initContainers"`
				Containers     []container `yaml:"containers"`
				Volumes        []volume    `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

func TestKubernetesDaemonSet(t *testing.T) {
	var ds daemonSet
	k8sDoc(t, "kubernetes/daemonset.yaml", &ds)
	var cm struct {
		Kind     string `yaml:"kind"`
		Metadata struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Data map[string]string `yaml:"data"`
	}
	k8sDoc(t, "kubernetes/configmap.yaml", &cm)
	if ds.Kind != "DaemonSet" || ds.APIVersion != "apps/v1" || cm.Kind != "ConfigMap" {
		t.Fatalf("kinds: %s %s, %s", ds.APIVersion, ds.Kind, cm.Kind)
	}
	pod := ds.Spec.Template.Spec
	i := slices.IndexFunc(pod.Containers, func(c container) bool { return c.Name == "watcher" })
	if i < 0 {
		t.Fatal("no container named watcher")
	}
	c := pod.Containers[i]

	// Config: the ConfigMap, at the path --config names; the node name
	// from the environment.
	cfgData := cm.Data["config.toml"]
	cfg := parseConfig(t, "configmap config.toml", []byte(cfgData))
	if cfgData == "" || cfg.Watcher.Node != "" {
		t.Errorf("ConfigMap config.toml: want one without node = (WATCHER_NODE names the node)")
	}
	if !slices.ContainsFunc(c.Env, func(e envVar) bool {
		return e.Name == "WATCHER_NODE" && e.ValueFrom != nil && e.ValueFrom.FieldRef.FieldPath == "spec.nodeName"
	}) {
		t.Errorf("container env lacks WATCHER_NODE from the fieldRef spec.nodeName")
	}
	if !slices.ContainsFunc(pod.Volumes, func(v volume) bool {
		return v.ConfigMap != nil && v.ConfigMap.Name == cm.Metadata.Name
	}) {
		t.Errorf("no volume uses the ConfigMap %q", cm.Metadata.Name)
	}
	ci := slices.Index(c.Args, "--config")
	if len(c.Args) == 0 || c.Args[0] != "run" || ci < 0 || ci+1 >= len(c.Args) {
		t.Fatalf("args %q: want run --config FILE", c.Args)
	}
	mountOf := func(path string) (name string, readOnly, ok bool) {
		best := ""
		for _, m := range c.VolumeMounts {
			if under(path, m.MountPath) && len(m.MountPath) > len(best) {
				best, name, readOnly, ok = m.MountPath, m.Name, m.ReadOnly, true
			}
		}
		return
	}
	if name, _, ok := mountOf(c.Args[ci+1]); !ok || !slices.ContainsFunc(pod.Volumes, func(v volume) bool {
		return v.Name == name && v.ConfigMap != nil && v.ConfigMap.Name == cm.Metadata.Name
	}) || filepath.Base(c.Args[ci+1]) != "config.toml" {
		t.Errorf("--config %s is not the ConfigMap's config.toml", c.Args[ci+1])
	}

	// HTTP: not loopback, on the probed and scraped port.
	if cfg.Watcher.HTTPListen != "0.0.0.0:9464" {
		t.Errorf("http_listen = %q in the pod, want 0.0.0.0:9464 (loopback is unreachable for probes and Prometheus)", cfg.Watcher.HTTPListen)
	}
	if len(c.Ports) != 1 || c.Ports[0].ContainerPort != 9464 {
		t.Errorf("ports %+v, want containerPort 9464", c.Ports)
	}
	for what, p := range map[string]struct {
		pr   *probe
		path string
	}{"liveness": {c.LivenessProbe, "/healthz"}, "readiness": {c.ReadinessProbe, "/readyz"}} {
		if p.pr == nil {
			t.Errorf("no %s probe", what)
			continue
		}
		port := p.pr.HTTPGet.Port
		if p.pr.HTTPGet.Path != p.path || (port != 9464 && (len(c.Ports) == 0 || port != c.Ports[0].Name)) {
			t.Errorf("%s probe GET %s on %v, want %s on 9464", what, p.pr.HTTPGet.Path, port, p.path)
		}
	}
	ann := ds.Spec.Template.Metadata.Annotations
	if ann["prometheus.io/scrape"] != "true" || ann["prometheus.io/port"] != "9464" || ann["prometheus.io/path"] != "/metrics" {
		t.Errorf("scrape annotations %v", ann)
	}

	// Security.
	for _, ct := range append(slices.Clone(pod.InitContainers), c) {
		sc := ct.SecurityContext
		if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
			t.Errorf("container %s: readOnlyRootFilesystem not true", ct.Name)
		}
		if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
			t.Errorf("container %s: allowPrivilegeEscalation not false", ct.Name)
		}
		if !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) {
			t.Errorf("container %s: capabilities.drop %q, want [ALL]", ct.Name, sc.Capabilities.Drop)
		}
		for _, r := range []string{"cpu", "memory"} {
			if ct.Resources.Requests[r] == "" || ct.Resources.Limits[r] == "" {
				t.Errorf("container %s: no %s request and limit", ct.Name, r)
			}
		}
	}
	if nr := pod.SecurityContext.RunAsNonRoot; nr == nil || !*nr || pod.SecurityContext.RunAsUser == 0 {
		t.Errorf("pod securityContext: runAsNonRoot must be true with a non-zero runAsUser")
	}

	// Storage: every target and the state dir on a writable hostPath
	// volume, so compactions reach Papyra's files and journals survive
	// restarts.
	hostPathVolume := map[string]bool{}
	for _, v := range pod.Volumes {
		if v.HostPath != nil {
			hostPathVolume[v.Name] = true
		}
	}
	paths := map[string]string{"state_dir": cfg.Watcher.StateDir}
	for _, tg := range cfg.Targets {
		paths["target "+tg.Name] = tg.Path
	}
	if len(cfg.Targets) == 0 {
		t.Error("ConfigMap config has no targets")
	}
	for what, p := range paths {
		name, ro, ok := mountOf(p)
		if !ok || ro || !hostPathVolume[name] {
			t.Errorf("%s %s is not on a writable hostPath volume (mount %q, readOnly %v)", what, p, name, ro)
		}
	}

	grace := duration(t, "shutdown_grace", cfg.Watcher.ShutdownGrace)
	if tg := time.Duration(pod.TerminationGracePeriodSeconds) * time.Second; tg <= grace+10*time.Second {
		t.Errorf("terminationGracePeriodSeconds %s must be well above shutdown_grace %s", tg, grace)
	}
	validate(t, "kubernetes/configmap.yaml config.toml", []byte(cfgData))
}

// validate runs `watcher validate` on a config, with the watcher built from
// this repository, so that the shipped configs are ones the program
// accepts.
func validate(t *testing.T, name string, config []byte) {
	t.Helper()
	bin := watcherBinary(t)
	path := filepath.Join(t.TempDir(), "config.toml")
	if err := os.WriteFile(path, config, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(bin, "validate", "--config", path).CombinedOutput()
	if err != nil {
		t.Errorf("watcher validate %s: %v\n%s", name, err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		// Papyra's data directory exists where the config is deployed,
		// not on the machine running the tests (the empty-root test of
		// the container validates with it present).
		if strings.Contains(l, "warning:") && !hostSpecificWarning.MatchString(l) {
			t.Errorf("watcher validate %s warns:\n%s", name, out)
			break
		}
	}
}

var hostSpecificWarning = regexp.MustCompile(`warning: target "[^"]*": the directory of path /var/lib/papyra/\S+ does not exist`)

var builtWatcher string

// watcherBinary builds cmd/watcher once per test run.
func watcherBinary(t *testing.T) string {
	t.Helper()
	if builtWatcher != "" {
		return builtWatcher
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatalf("go tool not found to build the watcher: %v", err)
	}
	dir, err := os.MkdirTemp("", "watcher-deploy-test")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "watcher")
	cmd := exec.Command(goTool, "build", "-o", bin, "github.com/papyra/watcher/cmd/watcher")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the watcher: %v\n%s", err, out)
	}
	builtWatcher = bin
	return bin
}

func TestMain(m *testing.M) {
	code := m.Run()
	if builtWatcher != "" {
		os.RemoveAll(filepath.Dir(builtWatcher))
	}
	os.Exit(code)
}
