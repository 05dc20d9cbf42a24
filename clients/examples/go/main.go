// Calls ragrail's gateway (GatewayService/Run) from Go and prints the outcome as one JSON line.
//
//	buf generate && go mod tidy && go build
//	RAGRAIL_ADDRESS=127.0.0.1:50051 RAGRAIL_API_KEY=rg_... ./gatewayclient "Who founded Northwind Rail?" [pipeline]
//
// RAGRAIL_TIMEOUT sets the deadline in seconds (default 60). Exit codes: 0 answered (a fallback
// too), 1 any other error, 2 bad address or RAGRAIL_TIMEOUT, 3 UNAVAILABLE.
package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	gatewayv1 "ragrail.example/gatewayclient/gen/ragrail/gateway/v1"
)

// The same channel settings as ragrail-client (docs/clients.md): UNAVAILABLE retried by gRPC
// within the deadline, round-robin over every address of a DNS name.
const serviceConfig = `{
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [{
    "name": [{"service": "ragrail.gateway.v1.GatewayService", "method": "Run"}],
    "retryPolicy": {"maxAttempts": 3, "initialBackoff": "0.2s", "maxBackoff": "2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
  }]
}`

func getenv(key, fallback string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return fallback
}

func main() {
	address := getenv("RAGRAIL_ADDRESS", "127.0.0.1:50051")
	query, pipeline := "Who founded Northwind Rail?", "rag"
	if len(os.Args) > 1 {
		query = os.Args[1]
	}
	if len(os.Args) > 2 {
		pipeline = os.Args[2] // "name" or "name@version"
	}
	timeoutS, err := strconv.ParseFloat(getenv("RAGRAIL_TIMEOUT", "60"), 64)
	if err != nil || timeoutS <= 0 {
		fmt.Fprintln(os.Stderr, "RAGRAIL_TIMEOUT must be a positive number of seconds")
		os.Exit(2)
	}

	creds := insecure.NewCredentials()
	if os.Getenv("RAGRAIL_TLS") == "1" { // the system's roots; see docs/clients.md for a private CA
		creds = credentials.NewTLS(&tls.Config{})
	}
	conn, err := grpc.NewClient(address,
		grpc.WithTransportCredentials(creds),
		grpc.WithDefaultServiceConfig(serviceConfig))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	defer conn.Close()

	// Always set a deadline: gRPC has none by default. The gateway passes what is left downstream.
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(timeoutS*float64(time.Second)))
	defer cancel()
	if key := os.Getenv("RAGRAIL_API_KEY"); key != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
	}

	var trailer metadata.MD
	resp, err := gatewayv1.NewGatewayServiceClient(conn).Run(ctx,
		&gatewayv1.RunRequest{Pipeline: pipeline, Query: query}, grpc.Trailer(&trailer))
	if err != nil {
		st := status.Convert(err)
		fmt.Fprintf(os.Stderr, "%s: %s %v\n", st.Code(), st.Message(), trailer.Get("retry-after"))
		if st.Code() == codes.Unavailable {
			os.Exit(3)
		}
		os.Exit(1)
	}
	// A fallback is an answer, not an error: check Fallback and FallbackReason.
	out, _ := json.Marshal(map[string]any{
		"answer":           resp.GetAnswer(),
		"pipeline":         resp.GetPipeline(),
		"pipeline_version": resp.GetPipelineVersion(),
		"fallback":         resp.GetFallback(),
		"fallback_reason":  resp.GetFallbackReason().String(),
		"request_id":       resp.GetRequestId(),
	})
	fmt.Println(string(out))
}
