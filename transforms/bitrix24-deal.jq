# bitrix-deals: a Bitrix24 outbound event (form-encoded, parsed by the inbound route into
# {"event", "event_handler_id", "data": {"FIELDS": {"ID"}}, "ts", "portal"}; the auth[...] part
# with the portal's tokens is checked and removed before this runs) → contract crm-deal v1.
# Bitrix24 sends only the deal's ID: whoever needs the deal calls crm.deal.get.
(.event // "") as $ev
| (({"ONCRMDEALADD": "created", "ONCRMDEALUPDATE": "updated", "ONCRMDEALDELETE": "deleted"} | .[$ev])
   // error("not a deal event: \($ev)")) as $change
| {
    deal_id: .data.FIELDS.ID,
    change: $change,
    event: .event,
    portal: .portal,
    event_ts: (.ts | tonumber)
  }
+ (if .event_handler_id then {handler_id: .event_handler_id} else {} end)
