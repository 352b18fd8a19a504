//! The server as generic gRPC tools see it, without a token: health, and reflection in both
//! versions tools speak (`v1` for grpcurl, `v1alpha` for Python's grpcio-reflection).

use tonic_reflection::pb::{v1, v1alpha};

use crate::start;

/// Every service a reflection client should list.
const SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
    "tether.v1.AdminService",
    "tether.v1.AlertService",
    "tether.v1.AgentService",
    "tether.v1.CommandService",
    "tether.v1.FleetService",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_v1_and_v1alpha_clients_alike() {
    let (server, _dir) = start().await;
    let channel = server.channel().await;

    // v1alpha: list the services, then fetch the file that declares FleetService.
    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = vec![
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        },
        v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "tether.v1.FleetService".to_owned(),
                ),
            ),
        },
    ];
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let listed = responses
        .message()
        .await
        .expect("v1alpha answer")
        .expect("a first response");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        listed.message_response
    else {
        panic!("not a service list: {listed:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    for service in SERVICES {
        assert!(names.iter().any(|n| n == service), "{service} in {names:?}");
    }
    let file = responses
        .message()
        .await
        .expect("v1alpha answer")
        .expect("a second response");
    let Some(v1alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(fds)) =
        file.message_response
    else {
        panic!("not a file descriptor: {file:?}");
    };
    assert!(!fds.file_descriptor_proto.is_empty());

    // v1: the same list.
    let mut v1_client = v1::server_reflection_client::ServerReflectionClient::new(channel);
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut responses = v1_client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection is served")
        .into_inner();
    let listed = responses
        .message()
        .await
        .expect("v1 answer")
        .expect("a response");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        listed.message_response
    else {
        panic!("not a service list: {listed:?}");
    };
    let mut v1_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    v1_names.sort();
    assert_eq!(v1_names, names, "both versions list the same services");
    server.stop().await;
}
