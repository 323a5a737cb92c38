// Package urlcheck checks the server addresses of a config file as the
// daemon will use them, without contacting anything (no DNS lookup): URLs,
// their hosts and their ports. Its messages show the user's value, with any
// password replaced by "xxxxx", and say what is wrong.
package urlcheck

import (
	"errors"
	"fmt"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// Error is a URL that cannot be used: URL is the value as written, with
// its password redacted, and Why says what is wrong ("port \"99999\" is
// not a number from 1 to 65535").
type Error struct {
	URL string
	Why string
}

func (e *Error) Error() string { return e.URL + ": " + e.Why }

// Redact returns raw with the secret part of its user information replaced
// by "xxxxx": the password of "user:password@", or the whole of "token@".
// It works on text that is not a valid URL too, which is what an error
// about such a URL must show.
func Redact(raw string) string {
	i := strings.Index(raw, "://")
	if i < 0 {
		return raw
	}
	rest := raw[i+3:]
	end := strings.IndexAny(rest, "/?#")
	if end < 0 {
		end = len(rest)
	}
	at := strings.LastIndex(rest[:end], "@")
	if at < 0 {
		return raw
	}
	user, _, hasPassword := strings.Cut(rest[:at], ":")
	secret := "xxxxx"
	if hasPassword {
		secret = user + ":xxxxx"
	}
	return raw[:i+3] + secret + rest[at:]
}

// Parse parses raw as a URL with an authority (scheme://[user@]host[:port]…)
// and checks its host (HostProblem) and its port: when one is written, a
// number from 1 to 65535. The error is an *Error.
func Parse(raw string) (*url.URL, error) {
	shown := Redact(raw)
	if host, port, ok := authority(raw); ok {
		if why := PortProblem(port); why != "" {
			return nil, &Error{URL: shown, Why: why}
		}
		if why := HostProblem(host); why != "" {
			return nil, &Error{URL: shown, Why: fmt.Sprintf("host %q %s", host, why)}
		}
	}
	u, err := url.Parse(raw)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return nil, &Error{URL: shown, Why: strings.TrimPrefix(err.Error(), "net/url: ")}
	}
	return u, nil
}

// authority returns the host (without brackets) and the port written in
// the authority of raw; ok is false when raw has no authority or its
// brackets are not closed (url.Parse says what is wrong then).
func authority(raw string) (host, port string, ok bool) {
	i := strings.Index(raw, "://")
	if i < 0 {
		return "", "", false
	}
	auth := raw[i+3:]
	if end := strings.IndexAny(auth, "/?#"); end >= 0 {
		auth = auth[:end]
	}
	if at := strings.LastIndex(auth, "@"); at >= 0 {
		auth = auth[at+1:]
	}
	if strings.HasPrefix(auth, "[") {
		end := strings.Index(auth, "]")
		if end < 0 {
			return "", "", false
		}
		host, port = auth[1:end], strings.TrimPrefix(auth[end+1:], ":")
		if zone := strings.Index(host, "%25"); zone >= 0 {
			host = host[:zone] + "%" + host[zone+3:]
		}
		return host, port, true
	}
	if colon := strings.LastIndex(auth, ":"); colon >= 0 {
		return auth[:colon], auth[colon+1:], true
	}
	return auth, "", true
}

// PortProblem says what is wrong with a port written in a URL, or returns
// "" when it is a number from 1 to 65535 (or empty: the default port).
func PortProblem(port string) string {
	if port == "" {
		return ""
	}
	n, err := strconv.Atoi(port)
	if err != nil || n < 1 || n > 65535 || strings.TrimLeft(port, "0123456789") != "" {
		return fmt.Sprintf("port %q is not a number from 1 to 65535", port)
	}
	return ""
}

// HostProblem says what is certainly wrong with host (a name or an IP
// address, without brackets), or returns "": an IP address that does not
// parse ("256.1.1.1", "1.2.3", "::g"), or characters no host name has.
// A name is not looked up. The phrase follows the host: `"256.1.1.1" is
// not an IPv4 address …`.
func HostProblem(host string) string {
	switch {
	case host == "":
		return ""
	case strings.Contains(host, ":"):
		if _, err := netip.ParseAddr(host); err != nil {
			return "is not an IPv6 address"
		}
	case strings.Trim(host, "0123456789.") == "" && strings.Contains(host, "."):
		if a, err := netip.ParseAddr(host); err != nil || !a.Is4() {
			return "is not an IPv4 address (four numbers from 0 to 255, such as 10.0.0.7)"
		}
	case strings.ContainsFunc(host, func(r rune) bool { return r <= ' ' || r == 0x7f || strings.ContainsRune(`/\?#@[]{}<>"'`+"`,;", r) }):
		return "is not a host name or an IP address"
	}
	return ""
}
