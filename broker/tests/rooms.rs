//! Managed rooms: creation, membership, roles and authorization, end to end.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use confab_codec::*;

fn group(room: &str, policy: JoinPolicy, invite: Vec<UserId>) -> CreateRoom {
    CreateRoom {
        kind: RoomKind::Group,
        room: Some(RoomId::new(room).unwrap()),
        peer: None,
        policy,
        meta: RoomMeta {
            name: format!("{room} name"),
            topic: "topic".into(),
            avatar_url: String::new(),
        },
        invite,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_is_enforced_and_recorded_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rooms.auto_create = false;
    let broker = start(config.clone()).await;
    let addr = broker.tcp_addr();
    let team = room("team");

    let mut alice = Conn::open(addr, "alice", "a1").await;
    let mut bob = Conn::open(addr, "bob", "b1").await;
    let mut carol = Conn::open(addr, "carol", "c1").await;

    // Unmanaged rooms do not exist when auto_create is off.
    let rid = carol.request_id();
    carol
        .send_frame(Conn::publish_frame(rid, &room("nowhere"), 1, b"x"))
        .await;
    assert_eq!(
        code(&carol.wait_reply(rid, |_| true).await.body),
        ErrorCode::NoSuchRoom
    );

    // Alice creates an invite-only group and invites Bob.
    match request(
        &mut alice,
        group("team", JoinPolicy::InviteOnly, vec![user("bob")]),
    )
    .await
    {
        Body::RoomInfo(info) => {
            assert_eq!(info.room, team);
            assert_eq!(info.member_count, 1);
            assert!(info.members.contains(&Member {
                user: user("alice"),
                role: Role::Owner
            }));
            assert!(info.members.contains(&Member {
                user: user("bob"),
                role: Role::Invited
            }));
            assert_eq!(info.meta.name, "team name");
            assert_eq!(info.head, Seq(2), "joined + invited are in the log");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        code(&request(&mut alice, group("team", JoinPolicy::Open, vec![])).await),
        ErrorCode::RoomExists
    );

    // Carol is not a member: no subscribe, publish, history or info.
    let ack = carol
        .subscribe(vec![(team.clone(), StartAt::From(Seq(1)))])
        .await;
    assert_eq!(ack.results[0].code, ErrorCode::NotMember);
    let rid = carol.request_id();
    carol
        .send_frame(Conn::publish_frame(rid, &team, 1, b"x"))
        .await;
    assert_eq!(
        code(&carol.wait_reply(rid, |_| true).await.body),
        ErrorCode::NotMember
    );
    let body = request(
        &mut carol,
        HistoryRequest {
            room: team.clone(),
            direction: Direction::After,
            anchor: Seq(0),
            limit: 10,
        },
    )
    .await;
    assert_eq!(code(&body), ErrorCode::NotMember);
    assert_eq!(
        code(&request(&mut carol, GetRoomInfo { room: team.clone() }).await),
        ErrorCode::NotMember
    );
    assert_eq!(
        code(&request(&mut carol, JoinRoom { room: team.clone() }).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(
            &request(
                &mut carol,
                InviteMember {
                    room: team.clone(),
                    user: user("carol")
                }
            )
            .await
        ),
        ErrorCode::Forbidden
    );

    // Bob accepts; he then sees the room's whole story.
    assert!(
        matches!(request(&mut bob, JoinRoom { room: team.clone() }).await, Body::RoomInfo(i) if i.member_count == 2)
    );
    bob.subscribe(vec![(team.clone(), StartAt::From(Seq(1)))])
        .await;
    alice.publish(&team, 1, b"welcome").await;
    let (events, _) = bob.events(4).await;
    assert_eq!(
        events.iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    assert_eq!(&events[1].2[..], b"bob", "MEMBER_INVITED names bob");
    assert_eq!(&events[3].2[..], b"welcome");

    // Bob cannot remove Alice; Alice removes Bob, whose subscription ends.
    assert_eq!(
        code(
            &request(
                &mut bob,
                RemoveMember {
                    room: team.clone(),
                    user: user("alice")
                }
            )
            .await
        ),
        ErrorCode::Forbidden
    );
    assert!(matches!(
        request(
            &mut alice,
            RemoveMember {
                room: team.clone(),
                user: user("bob")
            }
        )
        .await,
        Body::Ack(_)
    ));
    let (events, _) = bob.events(1).await;
    assert_eq!(events[0].1, 5, "bob sees his removal");
    alice.publish(&team, 2, b"after bob").await;
    assert!(
        bob.recv_timeout(std::time::Duration::from_millis(300))
            .await
            .is_err(),
        "nothing more for bob"
    );
    let rid = bob.request_id();
    bob.send_frame(Conn::publish_frame(rid, &team, 9, b"let me in"))
        .await;
    assert_eq!(
        code(&bob.wait_reply(rid, |_| true).await.body),
        ErrorCode::NotMember
    );

    // Direct rooms: both users find the same one.
    let dm = match request(
        &mut alice,
        CreateRoom {
            kind: RoomKind::Direct,
            room: None,
            peer: Some(user("carol")),
            policy: JoinPolicy::InviteOnly,
            meta: RoomMeta {
                name: String::new(),
                topic: String::new(),
                avatar_url: String::new(),
            },
            invite: vec![],
        },
    )
    .await
    {
        Body::RoomInfo(i) => i.room,
        other => panic!("{other:?}"),
    };
    match request(
        &mut carol,
        CreateRoom {
            kind: RoomKind::Direct,
            room: None,
            peer: Some(user("alice")),
            policy: JoinPolicy::InviteOnly,
            meta: RoomMeta {
                name: String::new(),
                topic: String::new(),
                avatar_url: String::new(),
            },
            invite: vec![],
        },
    )
    .await
    {
        Body::RoomInfo(i) => assert_eq!(i.room, dm),
        other => panic!("{other:?}"),
    }
    carol.publish(&dm, 1, b"hi alice").await;

    // Alice's rooms, with heads and unread counts.
    match request(
        &mut alice,
        ListRooms {
            after: None,
            limit: 10,
        },
    )
    .await
    {
        Body::RoomList(list) => {
            let names: Vec<_> = list.rooms.iter().map(|r| r.room.clone()).collect();
            assert!(names.contains(&team) && names.contains(&dm), "{names:?}");
            let t = list.rooms.iter().find(|r| r.room == team).unwrap();
            assert_eq!(t.head, Seq(6));
            assert_eq!(t.unread, 6);
            assert!(t.last_activity_us > 0);
        }
        other => panic!("{other:?}"),
    }

    // Membership survives a restart.
    drop((alice, bob, carol));
    broker.shutdown().await;
    let broker = start_on(config, addr).await;
    let mut bob = Conn::open(addr, "bob", "b1").await;
    let ack = bob.subscribe(vec![(team.clone(), StartAt::Live)]).await;
    assert_eq!(ack.results[0].code, ErrorCode::NotMember);
    let mut alice = Conn::open(addr, "alice", "a1").await;
    assert_eq!(alice.publish(&team, 3, b"still mine").await.seq, Seq(7));
    broker.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_rooms_roles_and_leaving() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start(test_config(dir.path())).await;
    let addr = broker.tcp_addr();
    let lobby = room("lobby");
    let mut dave = Conn::open(addr, "dave", "d").await;
    let mut erin = Conn::open(addr, "erin", "e").await;
    assert!(matches!(
        request(&mut dave, group("lobby", JoinPolicy::Open, vec![])).await,
        Body::RoomInfo(_)
    ));
    // Anyone may join an open room; joining twice is harmless.
    assert!(matches!(
        request(
            &mut erin,
            JoinRoom {
                room: lobby.clone()
            }
        )
        .await,
        Body::RoomInfo(_)
    ));
    assert!(
        matches!(request(&mut erin, JoinRoom { room: lobby.clone() }).await, Body::RoomInfo(i) if i.member_count == 2)
    );
    // In an open room a plain member may invite (anyone may join anyway);
    // a stranger may not.
    assert!(matches!(
        request(
            &mut erin,
            InviteMember {
                room: lobby.clone(),
                user: user("fay")
            }
        )
        .await,
        Body::Ack(_)
    ));
    let mut gus = Conn::open(addr, "gus", "g").await;
    assert_eq!(
        code(
            &request(
                &mut gus,
                InviteMember {
                    room: lobby.clone(),
                    user: user("hal")
                }
            )
            .await
        ),
        ErrorCode::Forbidden
    );
    // Only the owner changes roles; an admin may then edit the room.
    assert_eq!(
        code(
            &request(
                &mut erin,
                SetRole {
                    room: lobby.clone(),
                    user: user("erin"),
                    role: Role::Admin
                }
            )
            .await
        ),
        ErrorCode::Forbidden
    );
    assert!(matches!(
        request(
            &mut dave,
            SetRole {
                room: lobby.clone(),
                user: user("erin"),
                role: Role::Admin
            }
        )
        .await,
        Body::Ack(_)
    ));
    let meta = RoomMeta {
        name: "Lobby".into(),
        topic: "say hi".into(),
        avatar_url: "https://x/a.png".into(),
    };
    match request(
        &mut erin,
        UpdateRoom {
            room: lobby.clone(),
            meta: meta.clone(),
        },
    )
    .await
    {
        Body::RoomInfo(i) => assert_eq!(i.meta, meta),
        other => panic!("{other:?}"),
    }
    // Leaving ends membership; the last owner cannot leave while others remain.
    assert_eq!(
        code(
            &request(
                &mut dave,
                LeaveRoom {
                    room: lobby.clone()
                }
            )
            .await
        ),
        ErrorCode::Forbidden
    );
    assert!(matches!(
        request(
            &mut erin,
            LeaveRoom {
                room: lobby.clone()
            }
        )
        .await,
        Body::Ack(_)
    ));
    let rid = erin.request_id();
    erin.send_frame(Conn::publish_frame(rid, &lobby, 1, b"x"))
        .await;
    assert_eq!(
        code(&erin.wait_reply(rid, |_| true).await.body),
        ErrorCode::NotMember
    );
    // Unmanaged rooms still work for anyone while auto_create is on.
    erin.publish(&room("scratch"), 2, b"free for all").await;
    broker.shutdown().await;
}
