//! The sans-IO agent core against an in-memory GCKS (a responder `IkeSa` with
//! `build_registration`), time passed in as `now`: the exact notify of a rejection
//! (RFC 9838 2.3.2 Figure 8), re-registration on soft expiry (R040, R041), exclusion
//! (2.4.3, R042, R043; 2.3.3, R023), Rekey SA rollover (R038).

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{member, psk_ike, tek_ctr, unix_now};
use gikev2_esp::{Direction, Engine};
use gikev2_member::agent::{Agent, AgentConfig, AgentError, MembershipId, RekeyEndpoint};
use gikev2_member::config::MembershipConfig;
use gikev2_member::{AgentEvent, DataPlane, NoDataPlane};
use gikev2_proto::crypto::sign::{SignatureScheme, SigningKey};
use gikev2_proto::crypto::{EncrAlg, KeyWrapAlg, SecretBytes, SeededRandom, SystemRandom};
use gikev2_proto::group::state::TekProtocol;
use gikev2_proto::group::{
    BuildContext, GroupAuth, GroupPolicy, GroupState, MemberGrant, RekeyContent, RekeySaState,
    RekeySender, RekeySuite, TekState, build_inband_rekey, build_registration,
};
use gikev2_proto::ike::{Decision, Event, IkeConfig, IkeSa, LocalAuth};
use gikev2_proto::registry::{NotifyType, ProtocolId, SnId};
use gikev2_proto::wire::{DeletePayload, IdPayload, TrafficSelector};

const GM: &str = "192.0.2.10:500";
const GCKS: &str = "192.0.2.1:500";
const JITTER: Duration = Duration::from_secs(2);
const DTD: u16 = 4;

fn kek(port: u16, life: u64) -> RekeySaState {
    let suite = RekeySuite::new(
        EncrAlg::AesGcm16 { key_len: 32 },
        None,
        KeyWrapAlg::Kw5649_256,
    )
    .unwrap();
    RekeySaState::generate(
        &mut SystemRandom::new(),
        TrafficSelector::single("192.0.2.1".parse().unwrap(), 17, Some(848)),
        TrafficSelector::single("239.9.9.9".parse().unwrap(), 17, Some(port)),
        suite,
        unix_now() + life,
    )
}

fn tek(life: u64) -> TekState {
    TekState::generate(
        &mut SystemRandom::new(),
        TekProtocol::Esp,
        TrafficSelector::any(false),
        TrafficSelector::single("239.1.1.1".parse().unwrap(), 17, Some(5000)),
        Some(EncrAlg::AesGcm16 { key_len: 16 }),
        None,
        SnId::Unspecified32,
        unix_now() + life,
    )
    .unwrap()
}

fn state(kek_life: u64, tek_life: u64) -> GroupState {
    GroupState {
        rekey: Some(kek(848, kek_life)),
        teks: vec![tek(tek_life)],
        policy: GroupPolicy {
            atd: Some(1),
            dtd: Some(DTD),
            sender_id_bits: Some(8),
            multiple_senders: true,
        },
        auth: GroupAuth::Signature(Box::new(
            SigningKey::generate(SignatureScheme::Ed25519).unwrap().0,
        )),
    }
}

/// One member agent and one in-memory GCKS, on a clock the test moves.
struct Net {
    agent: Agent,
    engine: Arc<Engine>,
    id: MembershipId,
    gcks_cfg: IkeConfig,
    gcks: Option<IkeSa>,
    state: GroupState,
    inband: bool,
    now: Instant,
    rng: SeededRandom,
    registrations: usize,
    left: Vec<NotifyType>,
    events: Vec<AgentEvent>,
    /// The member's address as the GCKS sees it, when a NAT rewrites it.
    nat: Option<SocketAddr>,
    /// Where the member's IKE datagrams went, and whether with the non-ESP marker.
    ike_to: Vec<(SocketAddr, bool)>,
    /// NAT-keepalives the member sent: when, and to where.
    keepalives: Vec<(Instant, SocketAddr)>,
}

impl Net {
    fn new(state: GroupState, sender: Option<u32>, inband: bool) -> Self {
        Self::with_nat(state, sender, inband, None)
    }

    /// As [`Net::new`], with the GCKS seeing the member at `nat` instead of `GM`.
    fn with_nat(
        state: GroupState,
        sender: Option<u32>,
        inband: bool,
        nat: Option<SocketAddr>,
    ) -> Self {
        let cfg = member("gm.test", GCKS.parse().unwrap(), sender);
        Self::joining(cfg, state, inband, nat)
    }

    /// A member joining with `cfg` (GCKS at [`GCKS`]).
    fn joining(
        cfg: MembershipConfig,
        state: GroupState,
        inband: bool,
        nat: Option<SocketAddr>,
    ) -> Self {
        let engine = Arc::new(Engine::default());
        let config = AgentConfig {
            reregister_jitter: JITTER,
            ..AgentConfig::default()
        };
        let mut agent = Agent::new(engine.clone(), Arc::new(NoDataPlane), config);
        let mut rng = SeededRandom::from_u64(7);
        let now = Instant::now();
        let id = agent.join(cfg, GM.parse().unwrap(), now, &mut rng).unwrap();
        let mut n = Self {
            agent,
            engine,
            id,
            gcks_cfg: psk_ike("gcks.test"),
            gcks: None,
            state,
            inband,
            now,
            rng,
            registrations: 0,
            left: Vec::new(),
            events: Vec::new(),
            nat,
            ike_to: Vec::new(),
            keepalives: Vec::new(),
        };
        n.drive();
        n
    }

    /// Moves datagrams both ways until both sides are quiet.
    fn drive(&mut self) {
        let gm: SocketAddr = self.nat.unwrap_or_else(|| GM.parse().unwrap());
        let gcks: SocketAddr = GCKS.parse().unwrap();
        for _ in 0..100 {
            let mut progress = false;
            while let Some(t) = self.agent.poll_transmit() {
                progress = true;
                if t.data == [0xff] && !t.nat_t {
                    self.keepalives.push((self.now, t.to));
                    continue;
                }
                self.ike_to.push((t.to, t.nat_t));
                let fresh = self.gcks.as_ref().is_none_or(IkeSa::is_closed);
                if fresh {
                    self.gcks = IkeSa::respond(
                        self.gcks_cfg.clone(),
                        &t.data,
                        gcks,
                        gm,
                        self.now,
                        &mut self.rng,
                    )
                    .ok();
                } else if let Some(sa) = self.gcks.as_mut() {
                    sa.handle(&t.data, self.now, &mut self.rng);
                }
            }
            if let Some(sa) = self.gcks.as_mut() {
                while let Some(e) = sa.poll_event() {
                    match e {
                        Event::RegistrationRequested { request, .. } => {
                            self.registrations += 1;
                            let sender = request.sender_ids.is_some();
                            let grant = MemberGrant {
                                sender,
                                sender_ids: if sender { vec![5] } else { Vec::new() },
                                wrap_keys: Vec::new(),
                                inband: self.inband,
                            };
                            let kwk = sa.key_wrap_key().unwrap();
                            let (gsa, kd) = build_registration(
                                &self.state,
                                &grant,
                                &kwk,
                                &BuildContext { now: unix_now() },
                            )
                            .unwrap();
                            sa.decide(
                                Decision::Accept {
                                    gsa,
                                    kd,
                                    transport_mode: false,
                                },
                                self.now,
                                &mut self.rng,
                            );
                        }
                        Event::LeaveRequested { notify, .. } => self.left.push(notify),
                        _ => {}
                    }
                }
                while let Some(d) = sa.poll_transmit() {
                    progress = true;
                    self.agent.handle_ike(self.id, &d, self.now, &mut self.rng);
                }
            }
            while let Some(e) = self.agent.poll_event() {
                self.events.push(e);
            }
            if !progress {
                return;
            }
        }
        panic!("no quiet after 100 rounds");
    }

    /// Moves time forward, firing the agent's timers on the way (as the runtime would).
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(t) = self.agent.poll_timeout().filter(|t| *t <= end) {
            self.now = t.max(self.now);
            self.agent.handle_timeout(self.now, &mut self.rng);
            self.drive();
        }
        self.now = end;
        self.agent.handle_timeout(self.now, &mut self.rng);
        self.drive();
    }

    fn rekey(&mut self, content: &RekeyContent<'_>) {
        let m = RekeySender::new(None)
            .build(
                &mut self.state,
                content,
                unix_now(),
                &mut SystemRandom::new(),
            )
            .unwrap();
        let ep = *self.agent.rekey_endpoints().iter().next().unwrap();
        for d in &m.datagrams {
            self.agent.handle_rekey(ep, d, self.now, &mut self.rng);
        }
        self.drive();
    }

    fn state_name(&self) -> String {
        self.agent.status(self.now).groups[0].state.clone()
    }

    fn spis(&self) -> Vec<(u32, Direction)> {
        self.agent
            .installed(common::GROUP)
            .into_iter()
            .map(|(s, d, _)| (s, d))
            .collect()
    }

    fn took(&mut self, f: impl Fn(&AgentEvent) -> bool) -> bool {
        let found = self.events.iter().any(f);
        self.events.clear();
        found
    }
}

#[test]
fn rejected_policy_sends_no_proposal_chosen_and_installs_nothing() {
    let mut s = state(3600, 3600);
    s.teks = vec![tek_ctr(&mut SystemRandom::new())];
    let mut n = Net::new(s, None, false);
    assert_eq!(n.registrations, 1);
    // RFC 9838 2.3.2 Figure 8: HDR, SK{IDg, N(NO_PROPOSAL_CHOSEN)}.
    assert_eq!(n.left, vec![NotifyType::NoProposalChosen]);
    assert_eq!(n.state_name(), "rejected");
    assert_eq!(n.engine.sa_count(), 0);
    assert!(n.agent.rekey_endpoints().is_empty());
    assert!(n.took(
        |e| matches!(e, AgentEvent::Rejected { notify, .. } if notify == "NO_PROPOSAL_CHOSEN")
    ));
    // A rejection is final: no registration storm.
    n.advance(Duration::from_secs(3600));
    assert_eq!(n.registrations, 1);
}

#[test]
fn sender_and_receiver_directions() {
    let n = Net::new(state(3600, 3600), Some(1), false);
    let spi = n.state.teks[0].spi;
    assert_eq!(n.spis(), vec![(spi, Direction::Outbound)]);
    let g = &n.agent.status(n.now).groups[0];
    assert_eq!(g.sender_ids, vec![5]);
    let n = Net::new(state(3600, 3600), None, false);
    assert_eq!(n.spis(), vec![(spi_of(&n), Direction::Inbound)]);
}

fn spi_of(n: &Net) -> u32 {
    n.state.teks[0].spi
}

#[test]
fn soft_expiry_of_a_tek_reregisters_and_replaces_it() {
    let mut n = Net::new(state(3600, 100), None, false);
    let old = spi_of(&n);
    // The GCKS moved on; this member missed the rekey.
    let fresh = tek(3600);
    n.state.teks = vec![fresh.clone()];
    // Soft lifetime is 80-90% of 100 s (R040); the re-registration follows within JITTER.
    n.advance(Duration::from_secs(79));
    assert_eq!(n.registrations, 1);
    let mut waited = 0;
    while n.registrations == 1 && waited < 13_000 {
        n.advance(Duration::from_millis(100));
        waited += 100;
    }
    assert!(
        n.events
            .iter()
            .any(|e| matches!(e, AgentEvent::Reregistering { reason, .. } if reason.contains("soft lifetime"))),
        "{:?}",
        n.events
    );
    assert_eq!(
        n.registrations, 2,
        "over the same IKE SA (GSA_REGISTRATION)"
    );
    // R021: the new registration replaces the old TEK, which leaves after DTD.
    let g = &n.agent.status(n.now).groups[0];
    assert_eq!(g.teks.len(), 2);
    assert_eq!(g.state, "up");
    n.advance(Duration::from_secs(u64::from(DTD)));
    assert_eq!(n.spis(), vec![(fresh.spi, Direction::Inbound)]);
    assert_ne!(old, fresh.spi);
    assert_eq!(n.engine.sa_count(), 1);
}

#[test]
fn soft_expiry_of_the_rekey_sa_reregisters() {
    let mut n = Net::new(state(100, 3600), None, false);
    n.advance(Duration::from_secs(89));
    assert_eq!(n.registrations, 1);
    n.advance(Duration::from_secs(1) + JITTER);
    assert_eq!(n.registrations, 2, "R041");
}

#[test]
fn exclusion_by_gsa_rekey_reregisters_after_a_random_delay() {
    let mut n = Net::new(state(3600, 3600), None, false);
    n.events.clear();
    n.rekey(&RekeyContent {
        deletes: vec![DeletePayload::all_of(ProtocolId::GikeUpdate)],
        ..RekeyContent::default()
    });
    assert_eq!(n.state_name(), "excluded");
    let delay = n.events.iter().find_map(|e| match e {
        AgentEvent::Reregistering { in_ms, .. } => Some(*in_ms),
        _ => None,
    });
    // R043: a random delay, at most the configured jitter.
    assert!(
        delay.is_some_and(|d| d <= JITTER.as_millis() as u64),
        "{:?}",
        n.events
    );
    n.advance(JITTER);
    assert_eq!(n.registrations, 2, "R042");
    assert_eq!(n.state_name(), "up");
}

/// RFC 9838 4.6, 2.4.3: a Delete with protocol 0 deletes the whole Group SA, "all
/// Data-Security SAs and Rekey SA": the member's TEKs leave after GWP_DTD whatever the
/// re-registration it starts brings, and it is excluded.
#[test]
fn whole_group_delete_retires_every_tek_after_dtd() {
    let mut n = Net::new(state(3600, 3600), None, false);
    let old = n.state.teks[0].spi;
    n.events.clear();
    n.rekey(&RekeyContent {
        deletes: vec![DeletePayload::whole_group()],
        ..RekeyContent::default()
    });
    assert!(
        n.events.iter().any(|e| matches!(
            e,
            AgentEvent::Rekeyed { deleting, .. } if *deleting == vec![format!("{old:#010x}")]
        )),
        "{:?}",
        n.events
    );
    assert_eq!(n.state_name(), "excluded");
    // The GCKS replaced the TEK meanwhile; the re-registration (within JITTER) gets it.
    let fresh = tek(3600);
    let fresh_spi = fresh.spi;
    n.state.teks = vec![fresh];
    n.advance(Duration::from_secs(u64::from(DTD)));
    assert_eq!(n.spis(), vec![(fresh_spi, Direction::Inbound)]);
}

/// RFC 9838 4.4.2.2.3 (R084): a GSA_REKEY over a Rekey SA whose SPI the GCKS announced
/// with GSA_NEXT_SPI, before the rekey that created it arrived, means that rekey was lost:
/// the member re-registers. A GSA_REKEY for an SPI nobody announced is only dropped.
#[test]
fn a_rekey_over_an_announced_next_spi_means_one_was_lost() {
    let mut st = state(3600, 3600);
    let kek2 = kek(848, 3600);
    st.rekey.as_mut().unwrap().next_spis = vec![kek2.spi];
    let mut n = Net::new(st, None, false);
    assert_eq!(n.registrations, 1);
    n.events.clear();
    // An unrelated Rekey SA's message: dropped, nothing else.
    n.state.rekey = Some(kek(848, 3600));
    let t = tek(3600);
    n.rekey(&RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    });
    assert!(
        !n.events
            .iter()
            .any(|e| matches!(e, AgentEvent::Reregistering { .. })),
        "{:?}",
        n.events
    );
    // The GCKS moved to the announced SA; this member missed the rekey that said so.
    n.state.rekey = Some(kek2);
    n.rekey(&RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    });
    assert!(
        n.events.iter().any(|e| matches!(e, AgentEvent::Reregistering { reason, .. } if reason.contains("GSA_NEXT_SPI"))),
        "{:?}",
        n.events
    );
    n.advance(JITTER);
    assert_eq!(n.registrations, 2);
}

#[test]
fn ike_sa_closed_without_rekey_sa_means_excluded() {
    // Inband rekey: the registration brings no GIKE_UPDATE policy.
    let mut n = Net::new(state(3600, 3600), None, true);
    assert!(n.agent.rekey_endpoints().is_empty());
    assert_eq!(n.state_name(), "up");
    n.events.clear();
    let (now, mut rng) = (n.now, SeededRandom::from_u64(9));
    n.gcks.as_mut().unwrap().delete(now, &mut rng);
    let d = n.gcks.as_mut().unwrap().poll_transmit().unwrap();
    n.agent.handle_ike(n.id, &d, n.now, &mut n.rng);
    n.drive();
    assert!(
        n.events
            .iter()
            .any(|e| matches!(e, AgentEvent::Excluded { .. })),
        "R023: {:?}",
        n.events
    );
    n.advance(JITTER);
    assert_eq!(n.registrations, 2, "a new IKE SA and GSA_AUTH");
    assert_eq!(n.state_name(), "up");
}

#[test]
fn ike_sa_closed_with_a_rekey_sa_is_normal() {
    let mut n = Net::new(state(3600, 3600), None, false);
    n.events.clear();
    let (now, mut rng) = (n.now, SeededRandom::from_u64(9));
    n.gcks.as_mut().unwrap().delete(now, &mut rng);
    let d = n.gcks.as_mut().unwrap().poll_transmit().unwrap();
    n.agent.handle_ike(n.id, &d, n.now, &mut n.rng);
    n.drive();
    // R022: the GCKS closes the IKE SA by convention; the member stays.
    assert!(n.events.is_empty(), "{:?}", n.events);
    assert_eq!(n.state_name(), "up");
    n.advance(Duration::from_secs(60));
    assert_eq!(n.registrations, 1);
    assert!(n.agent.status(n.now).groups[0].ike_sa.is_none());
}

#[test]
fn new_rekey_sa_moves_the_listening_endpoint_after_dtd() {
    let mut n = Net::new(state(3600, 3600), None, false);
    let old = RekeyEndpoint {
        addr: "239.9.9.9".parse().unwrap(),
        port: 848,
    };
    assert_eq!(
        n.agent.rekey_endpoints().into_iter().collect::<Vec<_>>(),
        vec![old]
    );
    let kek2 = kek(849, 3600);
    n.rekey(&RekeyContent {
        new_kek: Some(&kek2),
        ..RekeyContent::default()
    });
    let new = RekeyEndpoint { port: 849, ..old };
    // R038: the old Rekey SA is kept for DTD, then dropped.
    assert_eq!(
        n.agent.rekey_endpoints().into_iter().collect::<Vec<_>>(),
        vec![old, new]
    );
    let g = &n.agent.status(n.now).groups[0];
    assert_eq!(g.rekey_sas.len(), 2);
    assert!(g.rekey_sas[1].current && !g.rekey_sas[0].current);
    n.advance(Duration::from_secs(u64::from(DTD)));
    assert_eq!(
        n.agent.rekey_endpoints().into_iter().collect::<Vec<_>>(),
        vec![new]
    );
    // The next rekey comes over the new SA.
    n.state.rekey = Some(kek2);
    let t = tek(3600);
    n.rekey(&RekeyContent {
        teks: vec![&t],
        ..RekeyContent::default()
    });
    assert!(n.spis().contains(&(t.spi, Direction::Inbound)));
}

#[test]
fn leave_tells_the_gcks_and_removes_everything() {
    let mut n = Net::new(state(3600, 3600), Some(1), false);
    assert_eq!(n.engine.sa_count(), 1);
    assert!(!n.engine.spd().entries().is_empty());
    let (now, mut rng) = (n.now, SeededRandom::from_u64(3));
    n.agent.leave(common::GROUP, now, &mut rng).unwrap();
    n.drive();
    assert_eq!(n.left, vec![NotifyType::RegistrationFailed]);
    assert_eq!(n.engine.sa_count(), 0);
    assert!(n.engine.spd().entries().is_empty());
    assert!(
        n.agent.membership_ids().is_empty(),
        "IKE SA deleted, membership gone"
    );
}

/// RFC 9838 2.5.1 (R045): a sender asks for as many Sender-IDs as it has encryption
/// modules sealing with the TEKs; with a data plane that knows its count (the TUN data
/// plane has one), a join asking for another number is refused before anything is sent.
#[test]
fn a_sender_asks_for_as_many_sender_ids_as_encryption_modules() {
    struct OneModule;
    impl DataPlane for OneModule {
        fn encryption_modules(&self) -> Option<u32> {
            Some(1)
        }
    }
    let mut agent = Agent::new(
        Arc::new(Engine::default()),
        Arc::new(OneModule),
        AgentConfig::default(),
    );
    let mut rng = SeededRandom::from_u64(9);
    let gcks: SocketAddr = GCKS.parse().unwrap();
    let now = Instant::now();
    let e = agent
        .join(
            member("gm.test", gcks, Some(2)),
            GM.parse().unwrap(),
            now,
            &mut rng,
        )
        .unwrap_err();
    assert!(
        matches!(
            e,
            AgentError::SenderIdCount {
                asked: 2,
                modules: 1
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("--sender 2"), "{e}");
    assert!(agent.poll_transmit().is_none());
    // One Sender-ID for the one module, and receivers ask for none: both join.
    agent
        .join(
            member("gm.test", gcks, Some(1)),
            GM.parse().unwrap(),
            now,
            &mut rng,
        )
        .unwrap();
    let mut rx = Agent::new(
        Arc::new(Engine::default()),
        Arc::new(OneModule),
        AgentConfig::default(),
    );
    rx.join(
        member("rx.test", gcks, None),
        GM.parse().unwrap(),
        now,
        &mut rng,
    )
    .unwrap();
}

/// RFC 7296 2.23 / RFC 3948 4 (R002): behind a NAT, the member moves its IKE SA to the
/// GCKS's port 4500 (with the non-ESP marker) after IKE_SA_INIT and, while the SA stays
/// open (in-band rekey), sends a one-octet NAT-keepalive there after each 20 s without
/// other traffic; without a NAT it sends none.
#[test]
fn behind_a_nat_the_member_moves_to_4500_and_keeps_the_mapping_alive() {
    let natted: SocketAddr = "198.51.100.7:61000".parse().unwrap();
    let mut n = Net::with_nat(state(3600, 3600), None, true, Some(natted));
    assert_eq!(n.registrations, 1);
    let gcks_4500: SocketAddr = "192.0.2.1:4500".parse().unwrap();
    assert_eq!(
        n.ike_to[0],
        (GCKS.parse().unwrap(), false),
        "IKE_SA_INIT as configured"
    );
    assert!(n.ike_to.len() >= 2);
    assert!(
        n.ike_to[1..].iter().all(|t| *t == (gcks_4500, true)),
        "{:?}",
        n.ike_to
    );
    let registered = n.now;
    n.advance(Duration::from_secs(19));
    assert!(n.keepalives.is_empty(), "none before 20 s of silence");
    n.advance(Duration::from_secs(2));
    assert_eq!(
        n.keepalives,
        vec![(registered + Duration::from_secs(20), gcks_4500)]
    );
    n.advance(Duration::from_secs(20));
    assert_eq!(n.keepalives.len(), 2);
    assert!(n.keepalives.iter().all(|(_, to)| *to == gcks_4500));

    let mut direct = Net::new(state(3600, 3600), None, true);
    direct.advance(Duration::from_secs(60));
    assert!(direct.keepalives.is_empty());
    assert!(
        direct
            .ike_to
            .iter()
            .all(|t| *t == (GCKS.parse().unwrap(), false))
    );
}

impl Net {
    /// The GCKS replaces the group's TEKs with `teks` and pushes the group's state to the
    /// member over its IKE SA (GSA_INBAND_REKEY, RFC 9838 2.4.2).
    fn inband_rekey(&mut self, teks: Vec<TekState>, sender: bool) {
        self.state.teks = teks;
        let sa = self.gcks.as_mut().expect("the IKE SA is kept");
        let kwk = sa.key_wrap_key().unwrap();
        let (gsa, kd) =
            build_inband_rekey(&self.state, sender, &kwk, &BuildContext { now: unix_now() })
                .unwrap();
        sa.inband_rekey(gsa, kd, false, self.now, &mut self.rng);
        self.drive();
    }
}

/// A receiver registered to an in-band group (no Rekey SA), holding one TEK (its SPI),
/// with no event pending.
fn inband_receiver() -> (Net, u32) {
    let mut s = state(3600, 3600);
    s.rekey = None;
    let mut n = Net::new(s, None, true);
    let old = n.state.teks[0].spi;
    assert_eq!(n.spis(), vec![(old, Direction::Inbound)]);
    n.events.clear();
    (n, old)
}

#[test]
fn inband_rekey_installs_the_new_tek_and_retires_the_old_after_dtd() {
    let (mut n, old) = inband_receiver();
    let new = tek(3600);
    let new_spi = new.spi;
    n.inband_rekey(vec![new], false);
    assert!(
        n.events.iter().any(|e| matches!(
            e,
            AgentEvent::Rekeyed { message_id: None, installed, .. }
                if *installed == vec![format!("{new_spi:#010x}")]
        )),
        "{:?}",
        n.events
    );
    // RFC 9838 2.4.2.2: processed as a registration would be, without one.
    assert_eq!(n.registrations, 1);
    let spis = n.spis();
    assert_eq!(spis.len(), 2, "{spis:?}");
    assert!(
        spis.contains(&(old, Direction::Inbound)) && spis.contains(&(new_spi, Direction::Inbound)),
        "the old TEK stays for GWP_DTD: {spis:?}"
    );
    n.advance(Duration::from_secs(u64::from(DTD) + 1));
    assert_eq!(n.spis(), vec![(new_spi, Direction::Inbound)]);
    assert_eq!(n.state_name(), "up");
}

#[test]
fn inband_rekey_keeps_a_senders_sender_ids() {
    // AES-GCM is a counter mode (RFC 9838 2.5): senders need Sender-IDs.
    let mut s = state(3600, 3600);
    s.rekey = None;
    let mut n = Net::new(s, Some(1), true);
    assert_eq!(n.agent.status(n.now).groups[0].sender_ids, vec![5]);
    n.events.clear();
    let new = tek(3600);
    let new_spi = new.spi;
    // The GSA_INBAND_REKEY carries no GM_SENDER_ID nor GWP_SENDER_ID_BITS (RFC 9838
    // 4.5.3.3, Table 3): the sender keeps what it registered with.
    n.inband_rekey(vec![new], true);
    assert!(
        n.events
            .iter()
            .any(|e| matches!(e, AgentEvent::Rekeyed { .. })),
        "{:?}",
        n.events
    );
    assert!(n.left.is_empty(), "{:?}", n.left);
    assert_eq!(n.registrations, 1);
    let g = &n.agent.status(n.now).groups[0];
    assert_eq!(g.sender_ids, vec![5]);
    assert!(n.spis().contains(&(new_spi, Direction::Outbound)));
}

impl Net {
    /// The GCKS deletes SAs at the member over its IKE SA (GSA_INBAND_REKEY with Delete
    /// payloads, RFC 9838 2.4.3 Figure 13).
    fn inband_delete(&mut self, deletes: Vec<DeletePayload>) {
        let sa = self.gcks.as_mut().expect("the IKE SA is kept");
        sa.inband_delete(deletes, self.now, &mut self.rng);
        self.drive();
    }
}

/// RFC 9838 2.4.3, Figure 13: "If GCKS has a unicast SA with group member then it can use
/// the GSA_INBAND_REKEY exchange to delete SAs": the named TEK leaves after GWP_DTD.
#[test]
fn inband_delete_retires_the_named_tek_after_dtd() {
    let (mut n, old) = inband_receiver();
    n.inband_delete(vec![DeletePayload::child(ProtocolId::Esp, &[old])]);
    assert!(
        n.events.iter().any(|e| matches!(
            e,
            AgentEvent::Rekeyed { message_id: None, deleting, .. }
                if *deleting == vec![format!("{old:#010x}")]
        )),
        "{:?}",
        n.events
    );
    assert_eq!(
        n.spis(),
        vec![(old, Direction::Inbound)],
        "kept for GWP_DTD"
    );
    n.advance(Duration::from_secs(u64::from(DTD) + 1));
    assert!(n.spis().is_empty(), "{:?}", n.spis());
    assert_eq!(n.registrations, 1);
}

/// RFC 9838 2.4.3: "a Delete payload with zero SPI and protocol ID of GIKE_UPDATE ... may
/// be received either in the GSA_REKEY pseudo-exchange or in the GSA_INBAND_REKEY
/// exchange": the member is excluded and MUST re-register (R042), after a random delay
/// (R043), here with GSA_REGISTRATION over the same IKE SA.
#[test]
fn exclusion_by_gsa_inband_rekey_reregisters() {
    let mut s = state(3600, 3600);
    s.rekey = None;
    let mut n = Net::new(s, None, true);
    n.events.clear();
    n.inband_delete(vec![
        DeletePayload::all_of(ProtocolId::Esp),
        DeletePayload::all_of(ProtocolId::GikeUpdate),
    ]);
    assert_eq!(n.state_name(), "excluded");
    assert!(
        n.events
            .iter()
            .any(|e| matches!(e, AgentEvent::Reregistering { in_ms, .. } if *in_ms <= JITTER.as_millis() as u64)),
        "{:?}",
        n.events
    );
    n.advance(JITTER);
    assert_eq!(n.registrations, 2);
    assert_eq!(n.state_name(), "up");
}

/// When we cannot authenticate the GCKS (here: not the identity we expect) the GCKS has
/// admitted us already (a Sender-ID for a sender), and only a configuration change helps:
/// the agent retries after its longest delay, not its shortest (RFC 7296 2.21.2; the
/// GCKS is told AUTHENTICATION_FAILED). The GCKS refusing us keeps the usual backoff.
#[test]
fn a_gcks_we_cannot_authenticate_gets_the_longest_retry_delay() {
    let first_delay = |n: &Net| {
        n.events
            .iter()
            .find_map(|e| match e {
                AgentEvent::Reregistering { in_ms, .. } => Some(*in_ms),
                _ => None,
            })
            .expect("a retry is scheduled")
    };
    let max = AgentConfig::default().retry_max.as_millis() as u64;
    let mut cfg = member("gm.test", GCKS.parse().unwrap(), Some(1));
    cfg.ike.remote_id = Some(IdPayload::fqdn("another-gcks.test").unwrap());
    let n = Net::joining(cfg, state(3600, 3600), false, None);
    assert_eq!(
        n.registrations, 1,
        "the GCKS admitted us before we checked it"
    );
    assert!(
        n.events
            .iter()
            .any(|e| matches!(e, AgentEvent::Error { message, .. }
            if message.contains("we could not authenticate the GCKS"))),
        "{:?}",
        n.events
    );
    assert!(first_delay(&n) >= max, "{} ms", first_delay(&n));
    // A GCKS refusing our PSK: the first retry comes soon.
    let mut cfg = member("gm.test", GCKS.parse().unwrap(), Some(1));
    cfg.ike.local_auth = LocalAuth::Psk(SecretBytes::from_slice(b"not the psk"));
    let n = Net::joining(cfg, state(3600, 3600), false, None);
    assert_eq!(n.registrations, 0);
    assert!(first_delay(&n) < max, "{} ms", first_delay(&n));
}
