//go:build ragrail_offline

// Package insecure stands in for google.golang.org/grpc/credentials/insecure (grpc ≥ 1.34), which
// Debian bookworm's grpc (1.33) lacks. ../../build_offline.sh puts it on the offline GOPATH; it is
// never part of a normal build, where the real package comes with grpc.
package insecure

import (
	"context"
	"net"

	"google.golang.org/grpc/credentials"
)

// NewCredentials returns transport credentials that do no handshake: plaintext, as upstream's.
func NewCredentials() credentials.TransportCredentials { return plaintext{} }

type plaintext struct{}

func (plaintext) ClientHandshake(_ context.Context, _ string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, info{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (plaintext) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return conn, info{credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
}

func (plaintext) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "insecure"}
}

func (plaintext) Clone() credentials.TransportCredentials { return plaintext{} }

func (plaintext) OverrideServerName(string) error { return nil }

type info struct{ credentials.CommonAuthInfo }

func (info) AuthType() string { return "insecure" }
