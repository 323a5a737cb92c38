package testutil

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// SharedNATSAddr is where the machine's NATS server listens.
const SharedNATSAddr = "127.0.0.1:4222"

// NATSServer is an embedded NATS server started for one test. It is shut
// down when the test ends.
type NATSServer struct {
	// URL is the client URL (nats://127.0.0.1:PORT, or tls://… with TLS).
	URL string
	// Token is the token clients must present, when the server requires one.
	Token string
	// CAFile is the PEM file of the CA that signed the server and client
	// certificates, when TLS is on.
	CAFile string
	// ClientCertFile and ClientKeyFile are a client certificate signed by
	// CAFile, for mutual TLS.
	ClientCertFile, ClientKeyFile string

	t    testing.TB
	mu   sync.Mutex
	opts *server.Options
	srv  *server.Server
}

// NATSOption changes how StartNATS configures the server.
type NATSOption func(*natsSetup)

type natsSetup struct {
	token      string
	tls        bool
	verifyPeer bool
	conf       string
}

// WithNATSConfig makes the server apply conf, nats-server configuration
// text (an authorization block with users and permissions, say), under the
// test's own listen address and limits.
func WithNATSConfig(conf string) NATSOption {
	return func(s *natsSetup) { s.conf = conf }
}

// WithNATSToken makes the server require the given token.
func WithNATSToken(token string) NATSOption {
	return func(s *natsSetup) { s.token = token }
}

// WithNATSTLS turns TLS on, with a CA, a server certificate for 127.0.0.1 and
// localhost and a client certificate generated in t.TempDir(). With
// verifyClients the server also requires a client certificate signed by the
// CA (mutual TLS).
func WithNATSTLS(verifyClients bool) NATSOption {
	return func(s *natsSetup) { s.tls, s.verifyPeer = true, verifyClients }
}

// StartNATS starts an embedded NATS server on a free port of 127.0.0.1. It
// is shut down at the end of the test.
func StartNATS(t testing.TB, options ...NATSOption) *NATSServer {
	t.Helper()
	var setup natsSetup
	for _, o := range options {
		o(&setup)
	}
	opts := &server.Options{}
	if setup.conf != "" {
		if err := opts.ProcessConfigString(setup.conf); err != nil {
			t.Fatalf("testutil: NATS configuration: %v", err)
		}
	}
	opts.Host, opts.Port = "127.0.0.1", server.RANDOM_PORT
	opts.NoLog, opts.NoSigs = true, true
	// No HTTP monitoring, no cluster, no JetStream: a plain core server.
	opts.MaxPayload = 1 << 20
	s := &NATSServer{t: t, opts: opts, Token: setup.token}
	if setup.token != "" {
		opts.Authorization = setup.token
	}
	if setup.tls {
		dir := t.TempDir()
		files, err := writeTestPKI(dir)
		if err != nil {
			t.Fatalf("testutil: generate TLS certificates: %v", err)
		}
		s.CAFile = files.ca
		s.ClientCertFile, s.ClientKeyFile = files.clientCert, files.clientKey
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{
			CertFile: files.serverCert,
			KeyFile:  files.serverKey,
			CaFile:   files.ca,
			Verify:   setup.verifyPeer,
			Timeout:  2,
		})
		if err != nil {
			t.Fatalf("testutil: NATS TLS config: %v", err)
		}
		opts.TLSConfig = tc
		opts.TLS = true
		opts.TLSVerify = setup.verifyPeer
		opts.TLSTimeout = 2
	}
	s.start()
	port := s.srv.Addr().(*net.TCPAddr).Port
	opts.Port = port // Restart comes back on the same port.
	scheme := "nats"
	if setup.tls {
		scheme = "tls"
	}
	s.URL = fmt.Sprintf("%s://127.0.0.1:%d", scheme, port)
	t.Cleanup(s.Shutdown)
	return s
}

func (s *NATSServer) start() {
	s.t.Helper()
	srv, err := server.NewServer(s.opts)
	if err != nil {
		s.t.Fatalf("testutil: new NATS server: %v", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		s.t.Fatalf("testutil: NATS server on port %d not ready within 10s", s.opts.Port)
	}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
}

// Shutdown stops the server and waits until it is down. It may be called
// more than once.
func (s *NATSServer) Shutdown() {
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Shutdown()
		srv.WaitForShutdown()
	}
}

// Restart stops the server (every client is disconnected) and starts a new
// one on the same port with the same options.
func (s *NATSServer) Restart() {
	s.t.Helper()
	s.Shutdown()
	s.start()
}

// Start starts the server again after Shutdown, on the same port.
func (s *NATSServer) Start() {
	s.t.Helper()
	s.mu.Lock()
	running := s.srv != nil
	s.mu.Unlock()
	if !running {
		s.start()
	}
}

// Server returns the running embedded server (nil after Shutdown).
func (s *NATSServer) Server() *server.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.srv
}

// SharedNATS returns the URL of the NATS server of the machine on
// 127.0.0.1:4222. When it cannot be reached, outside CI the test gets an
// embedded server instead; in CI (where .ci/run starts one) that is an
// error.
func SharedNATS(t testing.TB) string {
	t.Helper()
	conn, err := net.DialTimeout("tcp", SharedNATSAddr, 2*time.Second)
	if err != nil {
		if inCI() {
			t.Fatalf("NATS not reachable on %s (%v): CI must run one (.ci/run starts it)", SharedNATSAddr, err)
		}
		t.Logf("NATS not reachable on %s (%v): using an embedded server", SharedNATSAddr, err)
		return StartNATS(t).URL
	}
	conn.Close()
	return "nats://" + SharedNATSAddr
}

type pkiFiles struct {
	ca, serverCert, serverKey, clientCert, clientKey string
}

// writeTestPKI generates a throwaway CA, a server certificate for 127.0.0.1
// and localhost and a client certificate, and writes them as PEM into dir.
func writeTestPKI(dir string) (pkiFiles, error) {
	f := pkiFiles{
		ca:         filepath.Join(dir, "ca.pem"),
		serverCert: filepath.Join(dir, "server-cert.pem"),
		serverKey:  filepath.Join(dir, "server-key.pem"),
		clientCert: filepath.Join(dir, "client-cert.pem"),
		clientKey:  filepath.Join(dir, "client-key.pem"),
	}
	now := time.Now()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return f, err
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "watcher test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return f, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return f, err
	}
	if err := writePEM(f.ca, "CERTIFICATE", caDER); err != nil {
		return f, err
	}
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, certPath, keyPath string) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial),
			Subject:      pkix.Name{CommonName: cn},
			NotBefore:    now.Add(-time.Hour),
			NotAfter:     now.Add(24 * time.Hour),
			KeyUsage:     x509.KeyUsageDigitalSignature,
			ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		}
		if usage == x509.ExtKeyUsageServerAuth {
			tmpl.DNSNames = []string{"localhost"}
			tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1")}
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		if err != nil {
			return err
		}
		keyDER, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return err
		}
		if err := writePEM(certPath, "CERTIFICATE", der); err != nil {
			return err
		}
		return writePEM(keyPath, "EC PRIVATE KEY", keyDER)
	}
	if err := leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, f.serverCert, f.serverKey); err != nil {
		return f, err
	}
	if err := leaf(3, "watcher test client", x509.ExtKeyUsageClientAuth, f.clientCert, f.clientKey); err != nil {
		return f, err
	}
	// Make sure the pair loads, so a broken generator fails here.
	if _, err := tls.LoadX509KeyPair(f.serverCert, f.serverKey); err != nil {
		return f, err
	}
	return f, nil
}

func writePEM(path, typ string, der []byte) error {
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
}
