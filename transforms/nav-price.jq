# nav-prices: a price change (contract price v1) → the fields of NAV's "Magistral Price Inbox"
# page, published as the OData V4 web service MagistralPriceInbox:
#   PATCH /BC/ODataV4/Company('demo')/MagistralPriceInbox('PRICES')   If-Match: *
# A subscription's endpoint is one fixed URL, so the entity patched is the one inbox record;
# the page's OnModifyRecord trigger writes the price into NAV's sales prices. NAV's OData
# field names are the page's control names; a blank date is 0001-01-01 in NAV.
def navdate: if . == null then "0001-01-01" else split("T") | .[0] end;
{
  Item_No: .sku,
  Sales_Code: .price_list,
  Currency_Code: (if .currency == "RUB" then "" else .currency end),
  Unit_Price: .amount,
  Price_Includes_VAT: .includes_vat,
  Starting_Date: (.valid_from | navdate),
  Ending_Date: (.valid_to | navdate)
}
