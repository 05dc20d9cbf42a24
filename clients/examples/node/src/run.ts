// Calls ragrail's gateway (GatewayService/Run) from Node.js and prints the outcome as one JSON line.
//
//   npm ci && npm run build
//   RAGRAIL_ADDRESS=127.0.0.1:50051 RAGRAIL_API_KEY=rg_... node dist/src/run.js "Who founded Northwind Rail?"
//
// @grpc/proto-loader reads the .proto at run time; `npm run gen` (proto-loader-gen-types) writes
// the TypeScript types for it, so the request, the response and the client are checked by tsc.
import * as fs from "node:fs";
import * as path from "node:path";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

import type { ProtoGrpcType } from "../gen/gateway";
import type { RunResponse__Output } from "../gen/ragrail/gateway/v1/RunResponse";

const PROTO_ROOT = process.env.RAGRAIL_PROTO_ROOT ?? path.resolve(__dirname, "../../../../../protos");

// The same channel settings as ragrail-client (docs/clients.md): UNAVAILABLE retried by gRPC on
// idempotent calls within the deadline, round-robin over every address of a DNS name, keepalive.
const SERVICE_CONFIG = {
  loadBalancingConfig: [{ round_robin: {} }],
  methodConfig: [
    {
      name: [{ service: "ragrail.gateway.v1.GatewayService", method: "Run" }],
      retryPolicy: {
        maxAttempts: 3,
        initialBackoff: "0.2s",
        maxBackoff: "2s",
        backoffMultiplier: 2,
        retryableStatusCodes: ["UNAVAILABLE"],
      },
    },
  ],
};

function credentials(): grpc.ChannelCredentials {
  const ca = process.env.RAGRAIL_CA_FILE;
  return ca ? grpc.credentials.createSsl(fs.readFileSync(ca)) : grpc.credentials.createInsecure();
}

function main(): void {
  const address = process.env.RAGRAIL_ADDRESS ?? "127.0.0.1:50051";
  const apiKey = process.env.RAGRAIL_API_KEY ?? "";
  const timeoutS = Number(process.env.RAGRAIL_TIMEOUT ?? "60");
  const query = process.argv[2] ?? "Who founded Northwind Rail?";
  const pipeline = process.argv[3] ?? "rag";

  const definition = protoLoader.loadSync("ragrail/gateway/v1/gateway.proto", {
    includeDirs: [PROTO_ROOT],
    keepCase: true, // field names as in the proto (request_id), like grpcurl's JSON
    longs: String,
    enums: String, // fallback_reason as its name, e.g. "FALLBACK_REASON_RETRIEVAL_MISS"
    defaults: true, // unset fields read as their zero value (fallback: false)
    oneofs: true,
  });
  const proto = grpc.loadPackageDefinition(definition) as unknown as ProtoGrpcType;
  const client = new proto.ragrail.gateway.v1.GatewayService(address, credentials(), {
    "grpc.service_config": JSON.stringify(SERVICE_CONFIG),
    "grpc.keepalive_time_ms": 20_000,
    "grpc.keepalive_timeout_ms": 5_000,
  });

  const metadata = new grpc.Metadata();
  if (apiKey) metadata.set("authorization", `Bearer ${apiKey}`);
  const deadline = new Date(Date.now() + timeoutS * 1000); // always set one: gRPC has no default

  client.Run({ pipeline, query }, metadata, { deadline }, (err, response?: RunResponse__Output) => {
    client.close();
    if (err || !response) {
      // Errors are your mistakes or refusals; retry-after (seconds) comes with RESOURCE_EXHAUSTED.
      const retryAfter = err?.metadata.get("retry-after")[0];
      console.error(`${grpc.status[err?.code ?? grpc.status.UNKNOWN]}: ${err?.details}` +
        (retryAfter ? ` (retry after ${retryAfter} s)` : ""));
      process.exitCode = err?.code === grpc.status.UNAVAILABLE ? 3 : 1;
      return;
    }
    // A fallback is an answer, not an error: check `fallback` and `fallback_reason`.
    console.log(JSON.stringify({
      answer: response.answer,
      pipeline: response.pipeline,
      pipeline_version: response.pipeline_version,
      fallback: response.fallback,
      fallback_reason: response.fallback_reason,
      request_id: response.request_id,
      citations: response.citations.map((c) => c.document_id),
    }));
  });
}

main();
