# nav-queries (request): a question on nav.query.* → the parameters of NAV's codeunit
# MagistralQueries, procedure Answer, published as an OData V4 unbound action:
#   POST /BC/ODataV4/MagistralQueries_Answer?company=demo   {"query": ..., "parametersJson": ...}
# A codeunit parameter is text, so the question travels as a JSON string. One responder
# answers both subjects; the question's shape tells which it is.
if has("customer_id") then
  {
    query: "customer.purchases",
    parametersJson: ({customerNo: .customer_id, fromDate: (.since // "0001-01-01"), top: (.limit // 100)} | tojson)
  }
elif has("order_id") then
  {query: "order.status", parametersJson: ({externalDocumentNo: .order_id} | tojson)}
else
  error("not a question NAV answers")
end
