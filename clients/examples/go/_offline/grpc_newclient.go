//go:build ragrail_offline

// Overlaid into Debian bookworm's google.golang.org/grpc (1.33) by ../build_offline.sh only: the
// example uses grpc.NewClient (grpc ≥ 1.63), which that release lacks. Never part of a normal build.

package grpc

// NewClient stands in for grpc ≥ 1.63's NewClient. Dial differs only in its default resolver
// scheme (passthrough, not dns), which makes no difference to the host:port targets CI dials.
func NewClient(target string, opts ...DialOption) (*ClientConn, error) {
	return Dial(target, opts...)
}
