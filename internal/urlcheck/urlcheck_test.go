package urlcheck

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, c := range []struct{ raw, want string }{
		{"redis://127.0.0.1:99999/0", `redis://127.0.0.1:99999/0: port "99999" is not a number from 1 to 65535`},
		{"redis://h:0/0", `redis://h:0/0: port "0" is not a number from 1 to 65535`},
		{"nats://x:abc", `nats://x:abc: port "abc" is not a number from 1 to 65535`},
		{"nats://x:+80", `nats://x:+80: port "+80" is not a number from 1 to 65535`},
		{"nats://u:hunter2@x:abc", `nats://u:xxxxx@x:abc: port "abc" is not a number from 1 to 65535`},
		{"nats://[::1]:70000", `nats://[::1]:70000: port "70000" is not a number from 1 to 65535`},
		{"redis://u:hunter2@[::1/0", `redis://u:xxxxx@[::1/0: missing ']' in host`},
		{"nats://256.1.1.1:4222", `nats://256.1.1.1:4222: host "256.1.1.1" is not an IPv4 address (four numbers from 0 to 255, such as 10.0.0.7)`},
		{"nats://1.2.3:4222", `nats://1.2.3:4222: host "1.2.3" is not an IPv4 address (four numbers from 0 to 255, such as 10.0.0.7)`},
		{"nats://[fe80::g]:4222", `nats://[fe80::g]:4222: host "fe80::g" is not an IPv6 address`},
	} {
		_, err := Parse(c.raw)
		var e *Error
		if !errors.As(err, &e) || err.Error() != c.want {
			t.Errorf("%s: error %v, want %q", c.raw, err, c.want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("%s: the error shows the password: %v", c.raw, err)
		}
	}
	for _, raw := range []string{
		"redis://127.0.0.1:6379/0", "redis://h", "rediss://:pw@h:6380/2", "unix:///run/redis.sock",
		"nats://[::1]:4222", "nats://[fe80::1%25eth0]:4222", "nats://10.0.0.7", "tls://nats.example.com:4443",
		"nats://x:", "nats://1password.example:4222",
	} {
		if _, err := Parse(raw); err != nil {
			t.Errorf("%s: %v", raw, err)
		}
	}
}

func TestRedact(t *testing.T) {
	for raw, want := range map[string]string{
		"nats://u:pw@h:x":     "nats://u:xxxxx@h:x",
		"nats://token@h:4222": "nats://xxxxx@h:4222",
		"redis://:p@ss@h/0":   "redis://:xxxxx@h/0",
		"redis://h/0?x=a@b":   "redis://h/0?x=a@b",
		"h:4222":              "h:4222",
		"redis://u:pw@[::1/0": "redis://u:xxxxx@[::1/0",
	} {
		if got := Redact(raw); got != want {
			t.Errorf("Redact(%q) = %q, want %q", raw, got, want)
		}
	}
}

func TestHostProblem(t *testing.T) {
	for host, bad := range map[string]bool{
		"": false, "localhost": false, "10.0.0.7": false, "::1": false, "redis-0.redis.svc": false,
		"256.1.1.1": true, "1.2.3": true, "1.2.3.4.5": true, "010.0.0.1": true, "::g": true,
		"a b": true, "a/b": true, "80": false,
	} {
		if got := HostProblem(host) != ""; got != bad {
			t.Errorf("HostProblem(%q) = %q", host, HostProblem(host))
		}
	}
}
