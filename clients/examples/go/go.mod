module ragrail.example/gatewayclient

go 1.22

require (
	google.golang.org/grpc v1.76.0
	google.golang.org/protobuf v1.36.10
)
