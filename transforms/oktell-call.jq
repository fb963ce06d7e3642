# oktell-calls: the flat JSON an OKTELL scenario sends from its "HTTP request" block (every
# value a string, numbers as the PBX shows them, local Moscow time) → contract call-event v1.
#   {"CallId", "Event": "CallStarted|CallAnswered|CallEnded", "Direction": "in|out",
#    "CallerId", "CalledId", "Service", "OperatorLogin", "OperatorName", "OperatorExt",
#    "DateTime": "YYYY-MM-DD hh:mm:ss", "Duration", "TalkTime",
#    "Result": "answered|noanswer|busy|failed", "RecordUrl"}
# Russian numbers come as 8XXXXXXXXXX, 7XXXXXXXXXX, XXXXXXXXXX or +7...: all become E.164;
# short internal extensions stay as they are.
def digits: explode | map(select(. >= 48 and . <= 57)) | implode;
def phone:
  tostring as $raw
  | ($raw | digits) as $d
  | if ($raw | startswith("+")) then "+" + $d
    elif ($d | length) <= 6 then $d
    elif ($d | length) == 11 and ($d | startswith("8")) then "+7" + ($d | ltrimstr("8"))
    elif ($d | length) == 10 then "+7" + $d
    else "+" + $d
    end;
def present: . != null and . != "";
(.Event // "") as $ev
| (.Result // "") as $res
| (({"CallStarted": "started", "CallAnswered": "answered", "CallEnded": "ended"} | .[$ev])
   // error("unknown OKTELL event: \($ev)")) as $event
| ({"answered": "answered", "noanswer": "missed", "busy": "busy", "failed": "failed"} | .[$res]) as $result
| {
    call_id: .CallId,
    event: $event,
    direction: (if .Direction == "out" then "outbound" else "inbound" end),
    caller: (.CallerId | phone),
    called: (.CalledId | phone),
    at: ((.DateTime | split(" ") | join("T")) + "+03:00")
  }
+ (if (.Service | present) then {queue: .Service} else {} end)
+ (if $event != "started" and (.OperatorLogin | present) then
     {operator: ({login: .OperatorLogin}
                 + (if (.OperatorName | present) then {name: .OperatorName} else {} end)
                 + (if (.OperatorExt | present) then {extension: .OperatorExt} else {} end))}
   else {} end)
+ (if $event == "ended" then
     {duration_s: (.Duration | tonumber), result: ($result // "failed")}
     + (if (.TalkTime | present) then {talk_s: (.TalkTime | tonumber)} else {} end)
   else {} end)
+ (if (.RecordUrl | present) then {recording_url: .RecordUrl} else {} end)
